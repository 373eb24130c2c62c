"""Configuration checks that run before any data is read or any model is trained.

Each failure names the config key the user typed, the value it had, and what is allowed; all problems found are
reported together in one ``ConfigError``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from recsys.errors import ConfigError  # noqa: F401  (re-exported for callers)

Check = Callable[[Mapping[str, Any]], list[str]]
_CHECKS: list[Check] = []


def register(check: Check) -> Check:
    """Add a check (a function cfg -> list of problems); compression techniques register their own."""
    _CHECKS.append(check)
    return check


def get(cfg: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    cur: Any = cfg
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return default
        cur = cur[part]
    return cur


def positive_int(cfg: Mapping[str, Any], key: str, allow_zero: bool = False) -> list[str]:
    v = get(cfg, key)
    ok = isinstance(v, int) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)
    return [] if ok else [f"{key}={v!r}: must be a {'non-negative' if allow_zero else 'positive'} integer"]


def number_in(cfg: Mapping[str, Any], key: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False
              ) -> list[str]:
    v = get(cfg, key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return [f"{key}={v!r}: must be a number"]
    bad = v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi)
    rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return [f"{key}={v!r}: must be in {rng}"] if bad else []


def one_of(cfg: Mapping[str, Any], key: str, allowed: list[Any]) -> list[str]:
    v = get(cfg, key)
    return [] if v in allowed else [f"{key}={v!r}: must be one of {allowed}"]


@register
def _train_checks(cfg: Mapping[str, Any]) -> list[str]:
    from recsys.tasks.base import OPTIMIZERS

    errs = positive_int(cfg, "train.epochs") + positive_int(cfg, "train.batch_size")
    errs += positive_int(cfg, "train.num_negatives")
    errs += number_in(cfg, "train.lr", 0.0, 10.0, lo_open=True)
    errs += number_in(cfg, "train.weight_decay", 0.0, 1.0)
    errs += one_of(cfg, "train.optimizer", sorted(OPTIMIZERS))
    sparse = get(cfg, "train.sparse")
    if sparse is not None:
        errs += one_of(cfg, "train.sparse", ["auto", True, False, "rowwise", "rowwise_lazy"])
        if sparse in ("rowwise", "rowwise_lazy") and (get(cfg, "train.optimizer") != "adam" or get(cfg, "train.weight_decay")):
            errs.append(f"train.sparse={sparse}: needs train.optimizer=adam and train.weight_decay=0 (got "
                        f"{get(cfg, 'train.optimizer')!r}, {get(cfg, 'train.weight_decay')}); use train.sparse=auto")
        if sparse is True and (get(cfg, "train.optimizer") not in ("adam", "sgd") or get(cfg, "train.weight_decay")):
            errs.append(f"train.sparse=true: needs train.optimizer=adam or sgd and train.weight_decay=0 (got "
                        f"{get(cfg, 'train.optimizer')!r}, {get(cfg, 'train.weight_decay')}); use train.sparse=auto")
    if get(cfg, "trainer") is not None:
        errs += one_of(cfg, "trainer.enable_progress_bar", [True, False, "auto"])
    if get(cfg, "train.divergence_factor") is not None:
        errs += number_in(cfg, "train.divergence_factor", 1.0, float("inf"), lo_open=True)
    spc = get(cfg, "train.steps_per_call")
    if spc is not None and spc != "auto":
        errs += [e.replace("integer", "integer or auto") for e in positive_int(cfg, "train.steps_per_call")]
    if get(cfg, "train.patience") is not None:
        errs += positive_int(cfg, "train.patience")
    if not isinstance(get(cfg, "seed"), int) or isinstance(get(cfg, "seed"), bool):
        errs.append(f"seed={get(cfg, 'seed')!r}: must be an integer")
    return errs


@register
def _model_checks(cfg: Mapping[str, Any]) -> list[str]:
    m = get(cfg, "model", {})
    errs: list[str] = []
    if "factors" in m:
        errs += positive_int(cfg, "model.factors")
    if "mlp_layers" in m:
        layers = m["mlp_layers"]
        if not isinstance(layers, (list, tuple)) or not layers or not all(
                isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in layers):
            errs.append(f"model.mlp_layers={layers!r}: must be a non-empty list of positive integers, e.g. [128,64,32]")
        elif layers[0] % 2 and str(m.get("_target_", "")).startswith("recsys.models.ncf."):
            errs.append(f"model.mlp_layers={layers!r}: the first size is the concatenated user+item embedding and must "
                        "be even")
    if "dropout" in m:
        errs += number_in(cfg, "model.dropout", 0.0, 1.0, hi_open=True)
    if m.get("pretrain") and m.get("name") != "neumf":
        errs.append(f"model.pretrain=true is only defined for model=neumf (got model={m.get('name')!r})")
    return errs


def non_finite(cfg: Any, prefix: str = "") -> list[str]:
    """Every float in the config (any key: train.lr, model.dropout, prune.ratio, distill.*, ...) must be finite: NaN
    and inf pass range checks silently (``nan < 0`` is False) and fail later inside torch, after data was read."""
    if isinstance(cfg, Mapping):
        return [p for k, v in cfg.items() for p in non_finite(v, f"{prefix}{k}.")]
    if isinstance(cfg, (list, tuple)):
        return [p for i, v in enumerate(cfg) for p in non_finite(v, f"{prefix[:-1]}[{i}].")]
    if isinstance(cfg, float) and not math.isfinite(cfg):
        return [f"{prefix[:-1]}={cfg!r}: must be a finite number (NaN and inf are not allowed)"]
    return []


def validate(cfg: Mapping[str, Any]) -> None:
    """Run every registered check; raise one ConfigError listing all problems (non-finite numbers first: the other
    checks' messages about them would only repeat the key)."""
    problems = non_finite(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    problems = [p for check in _CHECKS for p in check(cfg)]
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


@register
def _compress_checks(cfg: Mapping[str, Any]) -> list[str]:
    from recsys.compress.base import check_config

    return check_config(cfg)


@register
def _finetune_checks(cfg: Mapping[str, Any]) -> list[str]:
    if not isinstance(get(cfg, "finetune"), Mapping):
        return []
    errs = positive_int(cfg, "finetune.epochs", allow_zero=True)
    errs += number_in(cfg, "finetune.lr", 0.0, 10.0, lo_open=True)
    errs += number_in(cfg, "finetune.data_fraction", 0.0, 1.0, lo_open=True)
    return errs


@register
def _family_checks(cfg: Mapping[str, Any]) -> list[str]:
    from recsys.tasks.base import get_family

    task = get(cfg, "model.task")
    try:
        family = get_family(task)
    except ValueError as e:
        return [str(e)]
    return family.check(cfg)


@register
def _bench_checks(cfg: Mapping[str, Any]) -> list[str]:
    backends = get(cfg, "bench.backends")
    if backends is None:
        return []
    from recsys.export.onnx_backend import BACKENDS

    if not isinstance(backends, (list, tuple)) or not backends or any(b not in BACKENDS for b in backends):
        return [f"bench.backends={backends!r}: must be a non-empty list drawn from {list(BACKENDS)}"]
    other = [b for b in backends if b != "eager"]
    if other and get(cfg, "model.task") == "session":
        # the ONNX / torchao scorers serve score(users, items); a session model is served step by step with its state
        return [f"bench.backends={list(backends)!r} with model={get(cfg, 'model.name')!r}: session models are measured "
                f"on eager PyTorch only (the {other} runtimes serve pairwise score(users, items)); use [eager]"]
    return []
