"""Optuna trade-off sweeps through Hydra's sweeper interface (``python run.py -m hparams_search=train_lr``).

``TradeoffSweeper`` is hydra-optuna-sweeper's sweeper plus what a trade-off study needs:
- checks before any trial runs: every search-space key exists in the job config (Hydra composes a trial at both ends
  of every range, and the project's config checks run on it), no range is empty, one direction per objective, and
  objectives that the store's runs do not log are named;
- resume and many workers: ``n_trials`` is the number of *complete* trials the study should hold, in total over every
  worker (process or machine) running the same command on the same RDB storage; a worker asks for a trial only while
  complete + running < n_trials, and a trial asked in a race beyond that (queued retries count) is told FAIL unrun (user attr ``surplus``), so
  none runs twice and the study ends with exactly n_trials complete. Running trials send Optuna heartbeats; a trial
  whose worker was killed goes stale after ``grace_period`` s, ``optuna.storages.fail_stale_trials`` marks it FAIL and
  ``RetryHeartbeatStaleTrialCallback(max_retry)`` re-queues its params once (any worker runs the retry);
- MLflow: one parent run per study (tag ``recsys.kind=study``), its id kept in the study's user attr
  ``mlflow_parent_run_id``: the worker whose ``create_study`` wins (the storage's unique study name makes that atomic)
  creates the run, the others wait for the attr; each trial's run gets tags ``optuna_study``,
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
import threading
import time
import warnings
from collections.abc import Iterator, MutableSequence, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from recsys.errors import ConfigError
from recsys.sweep_space import SweepConfigError, corner_overrides, create_params_from_overrides, job_config, parse_space
from recsys.sweep_tracking import StudyTracker, fmt_value, redact
from recsys.tracking import short_number

log = logging.getLogger(__name__)
# fail_stale_trials is marked experimental, and Optuna warns that heartbeats are meant for Study.optimize: this sweeper
# sends them itself around each ask/tell batch (TradeoffSweeper.heartbeats), which is the same contract.
warnings.filterwarnings("ignore", message=r".*fail_stale_trials.*", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message=r".*Heartbeat of storage is supposed to be used with Study.optimize.*")
METRIC_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


# ------------------------------------------------------------------------------------------------------- helpers
def ensure_sqlite_dir(url: str | None) -> None:
    if url and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)


def contiguous(trials: list[optuna.Trial]) -> list[list[optuna.Trial]]:
    """Trials split into runs of consecutive numbers (another worker may have asked a number in between)."""
    groups: list[list[optuna.Trial]] = []
    for t in sorted(trials, key=lambda t: t.number):
        if groups and groups[-1][-1].number + 1 == t.number:
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups


# --------------------------------------------------------------------------------------------------------- sweeper
class TradeoffSweeper:
    """Optuna sweeper with early checks, resume to ``n_trials`` complete trials, MLflow study runs, progress.

    Built by the Hydra plugin ``hydra_plugins.recsys_sweeper`` (keyword arguments = the ``hydra.sweeper`` node)."""

    def __init__(self, *, sampler: Any, direction: Any, storage: Any | None = None, study_name: str | None = None,
                 n_trials: int = 20, n_jobs: int = 2, max_failure_rate: float = 0.0,
                 custom_search_space: str | None = None, params: DictConfig | None = None,
                 heartbeat_interval: int = 10, grace_period: int = 30, max_retry: int = 1,
                 poll_seconds: float = 2.0) -> None:
        if not 0.0 <= float(max_failure_rate) <= 1.0:
            raise SweepConfigError(f"hydra.sweeper.max_failure_rate={max_failure_rate}: must be in [0, 1]")
        self.sampler = instantiate(sampler, _execution_whitelist_=("hydra_plugins.hydra_optuna_sweeper.*",
                                                                   "optuna.samplers.*"))
        self.direction, self.storage, self.study_name = direction, storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = int(n_trials), int(n_jobs), float(max_failure_rate)
        self.extend_space = instantiate({"_target_": custom_search_space, "_partial_": True}) \
            if custom_search_space else None
        self.params = params if params is not None else OmegaConf.create({})
        self.heartbeat_interval, self.grace_period = int(heartbeat_interval), int(grace_period)
        self.max_retry, self.poll_seconds = int(max_retry), float(poll_seconds)
        if self.heartbeat_interval < 1 or self.grace_period <= self.heartbeat_interval:
            raise SweepConfigError(f"hydra.sweeper.heartbeat_interval={heartbeat_interval}, grace_period="
                                   f"{grace_period}: need heartbeat_interval >= 1 and grace_period > heartbeat_interval")
        self.job_idx = 0

    def make_storage(self) -> optuna.storages.BaseStorage | None:
        """The study's storage: an RDB storage with heartbeats and one retry of a killed trial (None: in memory)."""
        if self.storage is None:
            return None
        ensure_sqlite_dir(self.storage)
        self.rdb = optuna.storages.RDBStorage(
            str(self.storage), heartbeat_interval=self.heartbeat_interval, grace_period=self.grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry))
        return self.rdb

    def open_study(self, name: str, directions: list[str]) -> tuple[optuna.Study, bool]:
        """Create the study, or load it when another worker (or an earlier invocation) did; True when created here."""
        storage = self.make_storage()
        try:
            return optuna.create_study(study_name=name, storage=storage, sampler=self.sampler,
                                       directions=directions), True
        except optuna.exceptions.DuplicatedStudyError:
            pass
        except ValueError as e:
            raise SweepConfigError(f"study {name!r} in {redact(self.storage)}: {e}") from None
        study = optuna.load_study(study_name=name, storage=storage, sampler=self.sampler)
        if [d.name.lower() for d in study.directions] != directions:
            raise SweepConfigError(f"study {name!r} exists with directions "
                                   f"{[d.name.lower() for d in study.directions]}, not {directions}: use another "
                                   "hydra.sweeper.study_name")
        return study, False

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
        tracker = StudyTracker(self.config, name) if OmegaConf.select(self.config, "tracking.uri") else None
        if tracker is not None:
            self.check_objectives_logged(tracker.logged_metric_names())
        study, created = self.open_study(name, directions)
        if not created:  # another worker (or an earlier invocation) uses the same seed: draw other points than it
            self.sampler.reseed_rng()
        if tracker is not None:
            tracker.attach(study, created)
        self.fail_stale(study)
        n = self.counts(study)
        print(f"[sweep] study {name!r} in {redact(self.storage)}: {n['COMPLETE']} complete, {n['RUNNING']} running "
              f"(other workers, or killed: re-queued once after {self.grace_period}s without a heartbeat), "
              f"{n['WAITING']} queued; this worker runs trials until n_trials={self.n_trials} are complete "
              f"({self.n_jobs} at a time); objectives {dict(zip(names, directions))}", flush=True)
        while True:
            self.fail_stale(study)
            n = self.counts(study)
            if n["COMPLETE"] >= self.n_trials:
                break
            free = self.n_trials - n["COMPLETE"] - n["RUNNING"]
            if free <= 0:  # the remaining trials run on other workers: wait for them (or for one to go stale)
                time.sleep(self.poll_seconds)
                continue
            asked = [self.ask(study, space) for _ in range(min(free, self.n_jobs))]
            trials = self.drop_surplus(study, asked)
            for group in contiguous(trials):
                self.run_trials(study, group, fixed, fixed_over, names, directions, tracker, exprs)
        self.finish(study, names, directions, tracker, exprs)

    def ask(self, study: optuna.Study, space: dict[str, BaseDistribution]) -> optuna.Trial:
        """``study.ask`` plus a first heartbeat at once: a trial with no heartbeat never goes stale, so a worker killed
        before its heartbeat thread started would leave it RUNNING for ever."""
        trial = study.ask(fixed_distributions=space)
        if getattr(self, "rdb", None) is not None:
            self.rdb.record_heartbeat(trial._trial_id)  # noqa: SLF001 - see heartbeats()
        return trial

    @staticmethod
    def counts(study: optuna.Study) -> dict[str, int]:
        return {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}

    def fail_stale(self, study: optuna.Study) -> None:
        """Trials whose worker stopped sending heartbeats -> FAIL, and their params re-queued (max_retry times)."""
        if self.storage is not None:
            optuna.storages.fail_stale_trials(study)

    def drop_surplus(self, study: optuna.Study, asked: list[optuna.Trial]) -> list[optuna.Trial]:
        """Trials asked in a race between workers beyond n_trials: told FAIL unrun (user attr ``surplus``). A trial is
        surplus when n_trials complete, running or queued trials have smaller numbers: every worker decides alike. A
        queued (WAITING) trial counts: it is a killed trial's retry that some worker's next ask will run; left out, a
        worker asking while another re-queues got a new trial beside the retry, and the study ended with n_trials + 1
        complete (seen in the 3-worker stack test)."""
        live = sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                                 TrialState.RUNNING,
                                                                                 TrialState.WAITING)))
        keep = []
        for trial in asked:
            if sum(1 for x in live if x < trial.number) >= self.n_trials:
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=TrialState.FAIL)
            else:
                keep.append(trial)
        return keep

    @contextmanager
    def heartbeats(self, study: optuna.Study, trials: list[optuna.Trial]) -> Iterator[None]:
        """Send the trials' heartbeats while their jobs run. ``study.optimize`` does this itself; ask/tell (which the
        Hydra launcher needs: a batch of jobs at once) has no public hook, so the storage's ``record_heartbeat`` is
        called here with the trial's storage id."""
        storage = getattr(self, "rdb", None)  # built in make_storage
        if storage is None:
            yield
            return
        stop = threading.Event()

        def beat() -> None:
            while not stop.is_set():
                for t in trials:
                    storage.record_heartbeat(t._trial_id)  # noqa: SLF001
                stop.wait(self.heartbeat_interval)

        thread = threading.Thread(target=beat, daemon=True, name="optuna-heartbeat")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def run_trials(self, study: optuna.Study, trials: list[optuna.Trial], fixed: dict[str, Any],
                   fixed_over: list[str], names: Sequence[str], directions: Sequence[str],
                   tracker: StudyTracker | None, exprs: dict[str, str]) -> None:
        """Launch one batch (consecutive trial numbers: job number = trial number, so that workers sharing a sweep dir
        never share a job dir), tell Optuna the results, nest the runs under the study's parent run."""
        overrides = self._configure_trials(trials, fixed, fixed_over)
        t0 = time.perf_counter()
        try:
            with self.heartbeats(study, trials):
                returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
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
