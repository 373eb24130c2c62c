"""Optuna trade-off sweeps through Hydra's sweeper interface (``python run.py -m hparams_search=train_lr``).

``TradeoffSweeper`` is hydra-optuna-sweeper's sweeper plus what a trade-off study needs:
- checks before any trial runs: every search-space key exists in the job config (Hydra composes a trial at both ends
  of every range, and the project's config checks run on it), no range is empty, one direction per objective, and
  objectives that the store's runs do not log are named;
- resume: ``n_trials`` is the number of *complete* trials the study should hold; a second invocation with the same
  study runs only the missing ones, and re-queues the trials a killed invocation left RUNNING (their params again);
- MLflow: a parent run per study (tag ``recsys.kind=study``); each trial's run gets tags ``optuna_study``,
  ``optuna_trial`` and ``mlflow.parentRunId`` (the UI nests it under the study); the Pareto front is logged on the
  parent as ``pareto/pareto_front.{md,csv,png}``;
- progress: one line per finished trial (trial k/n, objective values, Pareto front / best so far).

Word clash: ``prune.*`` keys are *weight* pruning. Optuna's "pruners" (early stopping of bad trials) are not used by
Hydra's sweeper and nothing here is named after them.

Hydra finds the sweeper as a plugin: ``hydra_plugins/recsys_sweeper/`` (a ``hydra_plugins`` namespace package) holds
the ``Sweeper`` class Hydra registers and its ConfigStore entry ``hydra/sweeper=tradeoff``, which
``conf/hparams_search/*.yaml`` select by name (``python run.py --info plugins`` lists it). That class delegates to
``TradeoffSweeper`` here, imported only when a sweep starts. Only public Optuna APIs are used (``study.ask`` with the
search space, ``study.tell`` by trial number, ``study.enqueue_trial``).
"""
from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import MutableSequence, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from recsys.errors import ConfigError
from recsys.tracking import short_number

log = logging.getLogger(__name__)
STUDY_TAG = "optuna_study"
KIND_TAG = "recsys.kind"
METRIC_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


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


# ------------------------------------------------------------------------------------------------------- helpers
def redact(url: str | None) -> str:
    """A storage URL without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", str(url))


def ensure_sqlite_dir(url: str | None) -> None:
    if url and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)


def fmt_value(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def trial_values_table(study: optuna.Study, names: Sequence[str], front: Sequence[optuna.trial.FrozenTrial]):
    """The Pareto front as a DataFrame: trial, MLflow run, params, objective values (as returned = as logged)."""
    import pandas as pd

    rows = []
    for t in sorted(front, key=lambda t: t.number):
        row: dict[str, Any] = {"trial": t.number, "mlflow_run_id": t.user_attrs.get("mlflow_run_id", "")}
        row.update({f"params.{k}": v for k, v in t.params.items()})
        row.update(dict(zip(names, t.values)))
        rows.append(row)
    return pd.DataFrame(rows)


class StudyTracker:
    """The MLflow side of a study: a parent run, tags on trial runs, the Pareto front artifacts."""

    def __init__(self, cfg: DictConfig, study_name: str) -> None:
        from mlflow.tracking import MlflowClient

        from recsys.tracking import init_store, normalise_uri

        self.uri = normalise_uri(str(cfg.tracking.uri))
        self.exp_id = init_store(self.uri, str(cfg.tracking.experiment),
                                 OmegaConf.select(cfg, "tracking.artifact_location"))
        self.client = MlflowClient(self.uri)
        self.study_name = study_name
        q = study_name.replace("'", "\\'")
        found = self.client.search_runs([self.exp_id], f"tags.{STUDY_TAG} = '{q}' and tags.`{KIND_TAG}` = 'study'")
        from recsys.lifecycle import identity

        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            for k, v in identity().items():   # this launcher now owns it: reaped if it dies (tracking.reap_dead_runs)
                self.client.set_tag(self.parent_id, k, v)
        else:
            run = self.client.create_run(self.exp_id, run_name=f"study {study_name}",
                                         tags={STUDY_TAG: study_name, KIND_TAG: "study", **identity()})
            self.parent_id = run.info.run_id

    def logged_metric_names(self) -> set[str]:
        """Metric keys logged by the experiment's recent pipeline runs (empty for a fresh store)."""
        runs = self.client.search_runs([self.exp_id], max_results=50, order_by=["attributes.start_time DESC"])
        return {k for r in runs if r.data.tags.get(KIND_TAG) is None for k in r.data.metrics}

    def tag_trial(self, sweep_dir: str, job_num: int, trial: optuna.trial.FrozenTrial | optuna.Trial) -> str | None:
        """Find the run the job logged (tags sweep_dir + job_num), tag it with the study and nest it under the parent."""
        q = sweep_dir.replace("'", "\\'")
        runs = self.client.search_runs([self.exp_id], f"tags.sweep_dir = '{q}' and tags.job_num = '{job_num}'")
        if not runs:
            return None
        rid = runs[0].info.run_id
        tags = {STUDY_TAG: self.study_name, "optuna_trial": trial.number, "mlflow.parentRunId": self.parent_id}
        for k, v in tags.items():
            self.client.set_tag(rid, k, str(v))
        return rid

    def log_study(self, study: optuna.Study, names: Sequence[str], directions: Sequence[str], out_dir: Path,
                  space: dict[str, str], storage: str | None) -> None:
        """Pareto front table + plot and study counts on the parent run."""
        import matplotlib.pyplot as plt

        from recsys.report.plots import study_front

        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not self.client.get_run(self.parent_id).data.params:  # params are write-once: the first invocation's
            for k, v in {"objectives": ",".join(names), "directions": ",".join(directions), "storage": redact(storage),
                         **{f"space.{k}": v for k, v in space.items()}}.items():
                self.client.log_param(self.parent_id, k, str(v)[:6000])
        counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
        for k, v in counts.items():
            self.client.log_metric(self.parent_id, f"study/n_{k}", v)
        if done:
            front = study.best_trials
            table = trial_values_table(study, names, front)
            out_dir.mkdir(parents=True, exist_ok=True)
            table.to_csv(out_dir / "pareto_front.csv", index=False)
            md = [f"# Study {self.study_name}: Pareto front ({len(front)} of {len(done)} complete trials)", "",
                  "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
            md += ["| " + " | ".join((short_number(v) if c.startswith("params.") else fmt_value(v))
                                     if isinstance(v, float) else str(v) for c, v in zip(table.columns, row)) + " |"
                   for row in table.itertuples(index=False)]
            (out_dir / "pareto_front.md").write_text("\n".join(md) + "\n")
            fig = study_front([t.values for t in done], directions, names, [t.number for t in done],
                              params=[t.params for t in done], title=f"study {self.study_name}: {len(front)} Pareto-optimal of {len(done)} trials")
            fig.savefig(out_dir / "pareto_front.png", dpi=110)
            plt.close(fig)
            self.client.log_metric(self.parent_id, "study/n_pareto", len(front))
            self.client.log_artifacts(self.parent_id, str(out_dir), "pareto")
        self.client.set_terminated(self.parent_id, "FINISHED")


# --------------------------------------------------------------------------------------------------------- sweeper
class TradeoffSweeper:
    """Optuna sweeper with early checks, resume to ``n_trials`` complete trials, MLflow study runs, progress.

    Built by the Hydra plugin ``hydra_plugins.recsys_sweeper`` (keyword arguments = the ``hydra.sweeper`` node)."""

    def __init__(self, *, sampler: Any, direction: Any, storage: Any | None = None, study_name: str | None = None,
                 n_trials: int = 20, n_jobs: int = 2, max_failure_rate: float = 0.0,
                 custom_search_space: str | None = None, params: DictConfig | None = None) -> None:
        if not 0.0 <= float(max_failure_rate) <= 1.0:
            raise SweepConfigError(f"hydra.sweeper.max_failure_rate={max_failure_rate}: must be in [0, 1]")
        self.sampler = instantiate(sampler, _execution_whitelist_=("hydra_plugins.hydra_optuna_sweeper.*",
                                                                   "optuna.samplers.*"))
        self.direction, self.storage, self.study_name = direction, storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = int(n_trials), int(n_jobs), float(max_failure_rate)
        self.extend_space = instantiate({"_target_": custom_search_space, "_partial_": True}) \
            if custom_search_space else None
        self.params = params if params is not None else OmegaConf.create({})
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.job_idx = config, hydra_context, 0
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    def _get_directions(self) -> list[str]:
        d = self.direction
        items = d if isinstance(d, MutableSequence) else [d]
        return [getattr(x, "name", x) for x in items]

    def _configure_trials(self, trials: list[optuna.Trial], fixed: dict[str, Any], fixed_over: list[str]
                          ) -> list[tuple[str, ...]]:
        """Each asked trial (its params sampled by ``study.ask``) -> the override list of its job."""
        out = []
        for trial in trials:
            for k, v in fixed.items():
                trial.set_user_attr(k, v)
            if self.extend_space is not None:
                self.extend_space(self.config, trial)
            overlap = trial.params.keys() & fixed.keys()
            if overlap:
                raise SweepConfigError(f"keys both searched and fixed: {sorted(overlap)}")
            out.append(tuple(f"{k}={v}" for k, v in {**trial.params, **fixed}.items()) + tuple(fixed_over))
        return out

    # ------------------------------------------------------------------------------------------------ checks
    def objectives(self) -> list[str]:
        obj = OmegaConf.select(self.config, "objectives")
        return [str(o) for o in obj] if obj is not None else []

    def check(self, space_exprs: dict[str, str], fixed_args: Sequence[str]) -> dict[str, BaseDistribution]:
        """Everything that can be known before a trial runs; raises SweepConfigError naming each problem."""
        space, _, _ = parse_space(space_exprs)
        directions = self._get_directions()
        names = self.objectives()
        problems = []
        if names and len(names) != len(directions):
            problems.append(f"objectives={names} has {len(names)} metric(s) but hydra.sweeper.direction={directions} "
                            f"has {len(directions)}: give one direction per objective")
        problems += [f"objectives: {n!r} is not a metric key '<stage>/<name>' (e.g. final/val_hr_at_10)"
                     for n in names if not METRIC_RE.match(n)]
        problems += [f"hydra.sweeper.direction: {d!r} must be 'maximize' or 'minimize'" for d in directions
                     if d not in ("maximize", "minimize")]
        loader = self.hydra_context.config_loader
        for key, expr in space_exprs.items():  # one key at a time, so that each bad key is named
            for over in corner_overrides({key: space[key]}):
                try:
                    loader.load_sweep_config(self.config, list(fixed_args) + over)
                except Exception as e:  # noqa: BLE001 - ConfigCompositionException and friends
                    why = " ".join(str(e).split())
                    problems.append(f"search space {key}={expr}: the job config cannot take {over[0]!r} "
                                    f"({why}); search keys must exist in conf/ (or be added with '+')")
                    break
        if not problems:
            try:
                from recsys import checks
            except ImportError:  # pragma: no cover - a job that is not recsys's pipeline
                checks = None
            for over in corner_overrides(space):
                job = job_config(loader.load_sweep_config(self.config, list(fixed_args) + over))
                if checks is not None and job is not None:
                    try:
                        checks.validate(job)
                    except ConfigError as e:
                        problems.append(f"a trial at {over} would fail the job's checks: {e}")
        if problems:
            raise SweepConfigError("cannot start the sweep:\n  - " + "\n  - ".join(problems))
        return space

    def check_objectives_logged(self, known: set[str]) -> None:
        """When the store already has runs, every objective must be among their metrics (else it never will be)."""
        import difflib

        missing = [n for n in self.objectives() if known and n not in known]
        if missing:
            hints = {n: difflib.get_close_matches(n, sorted(known), n=3, cutoff=0.5) for n in missing}
            raise SweepConfigError(f"objectives {missing} are not logged by any run in this experiment; closest: "
                                   f"{hints}; e.g. {sorted(k for k in known if k.startswith('final/'))}")

    # ------------------------------------------------------------------------------------------------- sweep
    def sweep(self, arguments: list[str]) -> None:
        exprs = {str(k): str(v) for k, v in (self.params or {}).items()}
        fixed_args = []
        for a in arguments:  # sweep-style command-line overrides join the space (as in the stock sweeper)
            k, _, v = a.partition("=")
            try:
                is_sweep = bool(create_params_from_overrides([a])[0])
            except Exception:  # noqa: BLE001 - reported with its key by parse_space
                is_sweep = True
            if is_sweep:
                exprs[k] = v
            else:
                fixed_args.append(a)
                exprs.pop(k, None)  # a plain command-line value fixes a key the config would search
        self.check(exprs, fixed_args)
        space, fixed, fixed_over = create_params_from_overrides(
            [f"{k}={v}" for k, v in exprs.items()] + fixed_args)
        for k in fixed:
            space.pop(k, None)
        directions = self._get_directions()
        names = self.objectives() or [f"objective_{i}" for i in range(len(directions))]
        name = self.study_name or f"{self.config.hydra.job.config_name}-{OmegaConf.select(self.config, 'data.name')}"
        ensure_sqlite_dir(self.storage)
        tracker = StudyTracker(self.config, name) if OmegaConf.select(self.config, "tracking.uri") else None
        if tracker is not None:
            self.check_objectives_logged(tracker.logged_metric_names())
        try:
            study = optuna.create_study(study_name=name, storage=self.storage, sampler=self.sampler,
                                        directions=directions, load_if_exists=True)
        except ValueError as e:
            raise SweepConfigError(f"study {name!r} in {redact(self.storage)}: {e} (use another "
                                   "hydra.sweeper.study_name for different objectives)") from None
        if list(study.directions) and [d.name.lower() for d in study.directions] != directions:
            raise SweepConfigError(f"study {name!r} exists with directions "
                                   f"{[d.name.lower() for d in study.directions]}, not {directions}: use another "
                                   "hydra.sweeper.study_name")
        requeued = self.requeue_interrupted(study)
        n_done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        to_go = max(0, self.n_trials - n_done)
        print(f"[sweep] study {name!r} in {redact(self.storage)}: {n_done} complete, {requeued} interrupted "
              f"re-queued; running {to_go} trial(s) to reach n_trials={self.n_trials} "
              f"({self.n_jobs} at a time); objectives {dict(zip(names, directions))}", flush=True)
        while to_go > 0:
            batch = min(to_go, self.n_jobs)
            trials = [study.ask(fixed_distributions=space) for _ in range(batch)]
            overrides = self._configure_trials(trials, fixed, fixed_over)
            t0 = time.perf_counter()
            try:
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            except BaseException as e:
                for t in trials:
                    study.tell(t, state=TrialState.FAIL)
                if isinstance(e, SystemExit):
                    raise SweepConfigError(f"a trial's job exited with status {e.code} (its error is printed above); "
                                           f"trials {[t.number for t in trials]} marked failed") from None
                raise
            seconds = time.perf_counter() - t0
            failures = []
            for trial, ret in zip(trials, returns):
                state, values = TrialState.COMPLETE, None
                try:
                    rv = ret.return_value
                    values = [float(v) for v in (rv if isinstance(rv, (list, tuple)) else [rv])]
                    if len(values) != len(directions):
                        raise SweepConfigError(f"the job returned {len(values)} value(s) for {len(directions)} "
                                               f"directions: objectives={names}")
                except Exception as e:  # noqa: BLE001 - the job's own error, kept for the failure report
                    state, values = TrialState.FAIL, None
                    failures.append(e)
                    log.warning(f"trial {trial.number} failed: {e}")
                if tracker is not None:
                    hc = ret.hydra_cfg.hydra if ret.hydra_cfg is not None else self.config.hydra
                    rid = tracker.tag_trial(str(hc.sweep.dir), int(hc.job.num), trial)
                    if rid:
                        trial.set_user_attr("mlflow_run_id", rid)
                study.tell(trial, state=state, values=values)
                self.progress(study, trial, values, names, directions, seconds)
            self.job_idx += len(returns)
            if len(failures) / len(returns) > self.max_failure_rate:
                if tracker is not None:
                    tracker.log_study(study, names, directions, Path(self.config.hydra.sweep.dir) / "pareto",
                                      exprs, self.storage)
                raise SweepConfigError(f"{len(failures)} of {len(returns)} trial(s) failed (max_failure_rate="
                                       f"{self.max_failure_rate}): {failures[0]}") from failures[0]
            to_go -= batch
        self.finish(study, names, directions, tracker, exprs)

    def requeue_interrupted(self, study: optuna.Study) -> int:
        """Trials left RUNNING by a killed invocation: mark them failed and queue their params to run again.
        (Do not run two invocations on one study at the same time: each would take the other's trials as killed.)"""
        n = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(t.number, state=TrialState.FAIL)
            if t.params:
                study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            n += 1
        return n

    def progress(self, study: optuna.Study, trial: optuna.Trial, values: list[float] | None, names: Sequence[str],
                 directions: Sequence[str], seconds: float) -> None:
        """One line per finished trial: k/n complete, its values, the best so far (the Pareto front when several)."""
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        params = ", ".join(f"{k}={short_number(v)}" for k, v in trial.params.items())
        got = ", ".join(f"{n}={fmt_value(v)}" for n, v in zip(names, values)) if values else "FAILED"
        best = ""
        if done:
            if len(directions) == 1:
                b = study.best_trial
                best = f"best {names[0]}={fmt_value(b.value)} (trial {b.number})"
            else:
                front = study.best_trials
                per = []
                for i, (n, d) in enumerate(zip(names, directions)):
                    pick = (max if d == "maximize" else min)(done, key=lambda t: t.values[i])
                    per.append(f"{n}={fmt_value(pick.values[i])} (#{pick.number})")
                best = f"Pareto front {len(front)} trial(s); best " + ", ".join(per)
        print(f"[sweep] trial {len(done)}/{self.n_trials} (#{trial.number}: {params}) {got}  [{seconds:.1f}s batch] "
              f"| {best}", flush=True)

    def finish(self, study: optuna.Study, names: Sequence[str], directions: Sequence[str],
               tracker: StudyTracker | None, exprs: dict[str, str]) -> None:
        out = Path(self.config.hydra.sweep.dir)
        out.mkdir(parents=True, exist_ok=True)
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if tracker is not None:
            tracker.log_study(study, names, directions, out / "pareto", exprs, self.storage)
        if not done:
            print("[sweep] no complete trials", flush=True)
            return
        front = study.best_trials
        results = {"name": "optuna", "study_name": study.study_name, "objectives": list(names),
                   "directions": list(directions), "n_complete": len(done),
                   "solutions": [{"trial": t.number, "params": t.params, "values": t.values} for t in front]}
        OmegaConf.save(OmegaConf.create(results), out / "optimization_results.yaml")
        print(f"[sweep] done: {len(done)} complete trials, Pareto front {[t.number for t in front]}; "
              f"{out / 'pareto'}" + (f"; MLflow parent run {tracker.parent_id}" if tracker else ""), flush=True)
        print(f"[sweep] report: python -m recsys.report --experiment "
              f"{OmegaConf.select(self.config, 'tracking.experiment')} --study {study.study_name}", flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: python run.py -m hparams_search=train_lr")
