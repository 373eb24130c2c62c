"""Search spaces of the trade-off sweeper (recsys.sweep): Hydra sweep syntax -> Optuna distributions, and the checks
that name each bad key before any trial runs."""
from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from recsys.errors import ConfigError


class SweepConfigError(ConfigError):
    """A search space, objective or study setting that cannot work; raised before any trial runs."""


# ------------------------------------------------------------------------------------------- search-space parsing
def distribution_of(override: Override) -> BaseDistribution | str:
    """Hydra sweep syntax -> an Optuna distribution (a plain value -> its string): ``choice(...)`` and shuffled or
    transformed ranges -> categorical; ``range(a, b, step)`` -> int/float with step (Hydra's stop is exclusive,
    Optuna's high is inclusive); ``interval(a, b)`` -> uniform, ``tag(log, interval(a, b))`` -> log-uniform."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and (value.shuffle or value.transformers)):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        values = list(override.sweep_iterator(transformer=Transformer.encode))
        if not values:
            raise ValueError("empty range: a range sweep must contain at least one value")
        step = abs(float(value.step))
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return IntDistribution(min(values), max(values), step=int(step))
        return FloatDistribution(float(min(values)), float(max(values)), step=step)
    if override.is_interval_sweep():
        log, lo, hi = "log" in value.tags, value.start, value.end
        if isinstance(lo, int) and isinstance(hi, int):
            return IntDistribution(int(lo), int(hi), log=log)
        return FloatDistribution(float(lo), float(hi), log=log)
    raise NotImplementedError(f"{override.input_line}: this sweep syntax has no Optuna distribution")


def create_params_from_overrides(arguments: list[str]
                                 ) -> tuple[dict[str, BaseDistribution], dict[str, Any], list[str]]:
    """Overrides -> (search space, fixed values, delete overrides kept verbatim), through Hydra's public parser."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, Any] = {}
    kept: list[str] = []
    for override in OverridesParser.create().parse_overrides(arguments):
        if override.is_delete():
            kept.append(str(override.input_line))
            continue
        value = distribution_of(override)
        if isinstance(value, BaseDistribution):
            space[override.get_key_element()] = value
        else:
            fixed[override.get_key_element()] = value
    return space, fixed, kept


# --------------------------------------------------------------------------------------------- search-space checks
def parse_space(params: dict[str, str]) -> tuple[dict[str, BaseDistribution], dict[str, Any], list[str]]:
    """``hydra.sweeper.params`` -> Optuna distributions; every problem is named by its key, all reported at once."""
    problems = []
    for key, expr in params.items():
        try:
            dists, _, _ = create_params_from_overrides([f"{key}={expr}"])
        except Exception as e:  # noqa: BLE001 - Hydra's parser and Optuna raise several types
            problems.append(f"search space {key}={expr}: {empty_hint(e)}")
            continue
        for d in dists.values():
            if isinstance(d, (FloatDistribution, IntDistribution)) and d.low >= d.high:
                problems.append(f"search space {key}={expr}: empty range (low {d.low} >= high {d.high}); "
                                "give low < high, or set a single value as a plain override")
            if isinstance(d, CategoricalDistribution) and len(d.choices) < 2:
                problems.append(f"search space {key}={expr}: choice of {len(d.choices)} value(s); "
                                "a search needs at least two")
    if problems:
        raise SweepConfigError("bad search space (hydra.sweeper.params or a sweep on the command line):\n  - "
                               + "\n  - ".join(problems))
    if not params:
        raise SweepConfigError("empty search space: set hydra.sweeper.params (e.g. in conf/hparams_search/*.yaml)")
    return create_params_from_overrides([f"{k}={v}" for k, v in params.items()])


def empty_hint(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "low <= high" in msg or "smaller than or equal" in msg or "at least one value" in msg or "empty" in msg.lower():
        return f"empty range ({msg})"
    return msg


def corner_overrides(space: dict[str, BaseDistribution]) -> list[list[str]]:
    """Two trials that between them touch both ends of every range (first / last choice)."""
    lows, highs = [], []
    for key, d in space.items():
        if isinstance(d, CategoricalDistribution):
            lo, hi = d.choices[0], d.choices[-1]
        else:
            lo, hi = d.low, d.high
        lows.append(f"{key}={lo}")
        highs.append(f"{key}={hi}")
    return [lows, highs]


def job_config(cfg: DictConfig) -> dict[str, Any] | None:
    """The resolved job part of a composed sweep config (no ``hydra`` node), or None if it cannot be resolved here."""
    c = OmegaConf.to_container(cfg, resolve=False)
    c.pop("hydra", None)
    try:
        return OmegaConf.to_container(OmegaConf.create(c), resolve=True)
    except Exception:  # noqa: BLE001 - e.g. an interpolation into hydra.*; the job will resolve it itself
        return None
