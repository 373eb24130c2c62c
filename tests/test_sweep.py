"""Optuna trade-off sweeps (recsys.sweep) through Hydra, with a fast stand-in job: same conf/, same tracking and tags as
the pipeline, metrics computed from the trial's params instead of training, returned through the pipeline's own
``objective_values``. Proves resume after a kill, the MLflow
study run + trial tags, progress lines, and the early errors for bad search spaces and objectives."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
HS = ("hparams_search=" if "hparams_search" in (ROOT / "conf" / "config.yaml").read_text() else "+hparams_search=")
STUDY = "train_lr-ml-100k-neumf"

FAKE_APP = '''
import math, os, sys, time
sys.path.insert(0, {root!r})
import hydra
from recsys import tracking
from recsys.errors import ConfigError
from recsys.pipeline import hydra_tags, objective_values

@hydra.main(config_path={conf!r}, config_name="config")
def main(cfg):
    lr, f = float(cfg.train.lr), int(cfg.model.factors)
    m = {{"final/val_hr_at_10": 0.3 + 0.004 * f - 0.05 * abs(math.log10(lr) + 2.5),
          "final/artifact_bytes": 1000.0 * f + 17.0, "final/latency_p50_ms": 0.05 + 0.001 * f}}
    with tracking.start_run(cfg.tracking.uri, cfg.tracking.experiment, "fake-job", tags=hydra_tags()) as tr:
        tr.log_params({{"train.lr": lr, "model.factors": f, "seed": cfg.seed}})
        tr.log_metrics(m)
        time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    try:   # the pipeline's own objective function, and run.py's handling of its error
        return objective_values(cfg, m)
    except ConfigError as e:
        print(f"error: {{e}}", file=sys.stderr)
        raise SystemExit(2) from None

if __name__ == "__main__":
    main()
'''


def app(tmp_path: Path) -> Path:
    p = tmp_path / "fake_app.py"
    p.write_text(FAKE_APP.format(root=str(ROOT), conf=str(ROOT / "conf")))
    return p


def sweep_cmd(tmp_path: Path, *extra: str, n_trials: int = 4, tag: str = "a") -> list[str]:
    return [sys.executable, str(app(tmp_path)), "-m", f"{HS}train_lr", f"paths.root_dir={tmp_path}",
            f"hydra.sweep.dir={tmp_path}/multirun/{tag}", "hydra/launcher=basic", "hydra.sweeper.n_jobs=1",
            f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.sampler.n_startup_trials=2", *extra]


def run_sweep(tmp_path: Path, *extra: str, n_trials: int = 4, tag: str = "a", env: dict | None = None,
              ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(sweep_cmd(tmp_path, *extra, n_trials=n_trials, tag=tag), capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, **(env or {})}, timeout=300)
    if ok:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mlruns/optuna.db"


def n_complete(tmp_path: Path) -> int:
    try:
        study = optuna.load_study(study_name=STUDY, storage=storage(tmp_path))
    except Exception:  # noqa: BLE001 - not created yet
        return 0
    return len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))


def test_killed_sweep_resumes_without_redoing_finished_trials(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    proc = subprocess.Popen(sweep_cmd(tmp_path, "hydra.sweeper.heartbeat_interval=1", n_trials=4, tag="first"), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "FAKE_SLEEP": "1.5"}, text=True)
    deadline = time.time() + 120
    while n_complete(tmp_path) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)  # the third trial is now running
    os.kill(proc.pid, signal.SIGKILL)
    out_first = proc.communicate()[0]
    study = optuna.load_study(study_name=STUDY, storage=storage(tmp_path))
    before = {t.number: (t.params, t.values) for t in study.get_trials() if t.state.name == "COMPLETE"}
    running = [t for t in study.get_trials() if t.state.name == "RUNNING"]
    assert 2 <= len(before) < 4, out_first[-2000:]
    assert "trial 2/4" in out_first

    # the restarted sweep waits until the killed trial's heartbeat is stale, then Optuna fails it and re-queues it once
    second = run_sweep(tmp_path, "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3", n_trials=4,
                       tag="second")
    out = second.stdout
    # the killed trial is still RUNNING at the start, or already failed and queued (a slow start outlasts grace_period)
    assert (f"{len(before)} complete, {len(running)} running" in out
            or (f"{len(before)} complete, 0 running" in out and f"{len(running)} queued" in out)), out[:2000]
    study = optuna.load_study(study_name=STUDY, storage=storage(tmp_path))
    done = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert len(done) == 4
    for num, (params, values) in before.items():  # finished trials kept as they were
        t = study.trials[num]
        assert (t.params, t.values) == (params, values)
    retry_of = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    retried = [t for t in done if retry_of(t) is not None]
    assert [study.trials[retry_of(t)].params for t in retried] == [t.params for t in retried]
    assert len(retried) == len(running)
    assert all(study.trials[r.number].state.name == "FAIL" for r in running)
    assert "trial 4/4" in out and "Pareto front" in out
    # only the missing trials ran: one finished MLflow run per complete trial (the killed job's run never finished)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("recsys-compress")
    runs = client.search_runs([exp.experiment_id])
    jobs = [r for r in runs if r.data.tags.get("recsys.kind") is None]
    assert len([r for r in jobs if r.info.status == "FINISHED"]) == 4
    assert len(jobs) <= 4 + len(running)
    parent = [r for r in runs if r.data.tags.get("recsys.kind") == "study"]
    assert len(parent) == 1 and parent[0].data.tags["optuna_study"] == STUDY
    pid = parent[0].info.run_id
    for t in done:  # each trial is an MLflow run tagged with the study, nested under the parent
        r = client.get_run(t.user_attrs["mlflow_run_id"])
        assert r.data.tags["optuna_study"] == STUDY and r.data.tags["mlflow.parentRunId"] == pid
        assert r.data.tags["optuna_trial"] == str(t.number)
        assert r.data.metrics["final/val_hr_at_10"] == t.values[0]
        assert r.data.metrics["final/artifact_bytes"] == t.values[1]
    arts = {a.path for a in client.list_artifacts(pid, "pareto")}
    assert {"pareto/pareto_front.md", "pareto/pareto_front.csv", "pareto/pareto_front.png"} <= arts
    assert parent[0].data.metrics["study/n_complete"] == 4
    # asking again for the same n_trials runs nothing
    third = run_sweep(tmp_path, n_trials=4, tag="third")
    assert "4 complete, 0 running" in third.stdout and "[sweep] trial " not in third.stdout
    assert n_complete(tmp_path) == 4
    assert len(optuna.load_study(study_name=STUDY, storage=storage(tmp_path)).trials) == 5  # 4 + the killed one


@pytest.mark.parametrize("extra,needles", [
    (["train.lr=interval(0.01,0.001)", "model.factors=range(8,8)"],
     ["search space train.lr=interval(0.01,0.001): empty range", "search space model.factors=range(8,8): empty range"]),
    (["nope.ratio=interval(0.1,0.9)", "objectives=[final/val_hr_at_10]"],
     ["search space nope.ratio=interval(0.1,0.9): the job config cannot take", "give one direction per objective"]),
    (["train.lr=interval(0.0,0.01)"], ["would fail the job's checks", "train.lr=0.0"]),
])
def test_bad_sweep_fails_before_any_trial(tmp_path, extra, needles):
    p = run_sweep(tmp_path, *extra, n_trials=2, ok=False)
    assert p.returncode != 0
    for needle in needles:  # every problem named, all in one error
        assert needle in p.stderr + p.stdout, (p.stdout + p.stderr)[-3000:]
    assert n_complete(tmp_path) == 0
    assert not (tmp_path / "mlruns" / "artifacts").exists() or not any((tmp_path / "mlruns" / "artifacts").rglob("*"))


def test_objective_no_run_logs_is_named(tmp_path):
    run_sweep(tmp_path, n_trials=1)
    p = run_sweep(tmp_path, "objectives=[final/val_hr_at_10,final/artifact_byte]", n_trials=2, tag="b", ok=False)
    assert p.returncode != 0
    err = p.stderr + p.stdout
    assert "final/artifact_byte" in err and "not logged by any run" in err and "final/artifact_bytes" in err
    assert n_complete(tmp_path) == 1


def test_sweeper_is_a_registered_hydra_plugin():
    """``python run.py --info plugins`` lists the sweeper that conf/hparams_search/*.yaml select by name."""
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "--info", "plugins"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    assert "TradeoffSweeperPlugin" in p.stdout
    from hydra.core.config_store import ConfigStore

    import hydra_plugins.recsys_sweeper.tradeoff_sweeper  # noqa: F401  (what Hydra's plugin scan imports)
    assert "tradeoff.yaml" in ConfigStore.instance().list("hydra/sweeper")


def test_a_trial_asked_beside_a_queued_retry_is_surplus():
    """The race the 3-worker stack test hit: n_trials=3, two trials complete, a killed trial's retry is queued (WAITING)
    and another worker's ask creates a new trial beside it (its pop ran before the retry was queued). The queued retry
    will run, so the new trial is the surplus one: told FAIL unrun; the retry itself is kept."""
    from types import SimpleNamespace

    from recsys.sweep import TradeoffSweeper

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="race")
    for _ in range(2):
        t = study.ask()
        study.tell(t, 1.0)
    study.enqueue_trial({})                      # the retry: WAITING, number 2
    new_id = storage.create_new_trial(storage.get_study_id_from_name("race"))   # the racing ask: RUNNING, number 3
    new = optuna.Trial(study, new_id)
    sweeper = SimpleNamespace(n_trials=3)
    assert TradeoffSweeper.drop_surplus(sweeper, study, [new]) == []
    assert study.trials[3].state == optuna.trial.TrialState.FAIL and study.trials[3].user_attrs["surplus"] is True
    retry = study.ask()                          # pops the queued retry
    assert retry.number == 2 and TradeoffSweeper.drop_surplus(sweeper, study, [retry]) == [retry]
