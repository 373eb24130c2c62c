"""The shared stack (scripts/stack.sh): PostgreSQL + an MLflow tracking server on it, started and stopped by the tests.

Runs the README's "Beyond one machine" commands: `scripts/stack.sh up`, `eval "$(scripts/stack.sh env)"`, a real job
(run.py, ml-100k, 1 epoch, tiny NeuMF) logged to the server, read back through the MLflow client (metrics, and an
artifact downloaded through the server), an Optuna study in the PostgreSQL storage shared by two processes, then
`scripts/stack.sh down`. Skips with the reason where PostgreSQL cannot be installed or started (.ci/run installs it).
The first `up` creates MLflow's schema in PostgreSQL: ~40-60 s on a busy 2-core machine. Under `pytest -n 2` each
worker that runs one of these tests starts its own stack (session fixture, own ports): at most two, mostly waiting.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from servers import free_port

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "scripts" / "stack.sh"
TINY = ["train.epochs=1", "train.batch_size=8192", "model.factors=4", "model.mlp_layers=[8,4]", "bench.requests=30",
        "bench.warmup=5", "bench.full_catalogue_requests=3", "bench.throughput_repeats=2", "bench.throughput_batch=512",
        "trainer.enable_progress_bar=false", "eval.full_ranking=false"]


def pg_installed() -> bool:
    return any(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) and shutil.which("psql") is not None


@pytest.fixture(scope="session")
def stack():
    """Start a private stack (own data dir under /tmp, free ports); yields the env that `stack.sh` and jobs see."""
    if not pg_installed() and os.geteuid() != 0:
        pytest.skip("PostgreSQL is not installed and the tests do not run as root (apt-get install postgresql)")
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700, and PostgreSQL runs as the `postgres` user.
    state = Path(tempfile.mkdtemp(prefix="recsys-stack-"))
    state.chmod(0o755)
    env = {**os.environ, "RECSYS_STACK_DIR": str(state), "RECSYS_PG_PORT": str(free_port()),
           "RECSYS_MLFLOW_PORT": str(free_port()), "RECSYS_PG_PASSWORD": "test-pw", "RECSYS_PYTHON": sys.executable}
    env.pop("RECSYS_TRACKING_URI", None)
    env.pop("RECSYS_OPTUNA_STORAGE", None)
    up = subprocess.run(["bash", str(STACK), "up"], env=env, capture_output=True, text=True, timeout=300)
    try:
        if up.returncode != 0:
            reason = (up.stderr or up.stdout).strip().splitlines()[-1:] or ["no output"]
            if not pg_installed() or "PostgreSQL" in reason[0]:
                pytest.skip(f"PostgreSQL could not be installed/started: {reason[0]}")
            pytest.fail(f"stack.sh up failed:\n{up.stdout}\n{up.stderr}")
        assert "stack up:" in up.stdout
        yield env
    finally:
        down = subprocess.run(["bash", str(STACK), "down"], env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)
    assert down.returncode == 0, down.stderr
    assert "PostgreSQL stopped" in down.stdout and "MLflow server stopped" in down.stdout


def stack_env(env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(["bash", str(STACK), "env"], env=env, capture_output=True, text=True, check=True).stdout
    pairs = [line.removeprefix("export ").split("=", 1) for line in out.splitlines()]
    return dict(pairs)


def test_stack_status_and_env(stack):
    st = subprocess.run(["bash", str(STACK), "status"], env=stack, capture_output=True, text=True, timeout=60)
    assert st.returncode == 0, st.stdout + st.stderr
    assert f"PostgreSQL: running on 127.0.0.1:{stack['RECSYS_PG_PORT']}" in st.stdout
    assert f"MLflow server: running at http://127.0.0.1:{stack['RECSYS_MLFLOW_PORT']}" in st.stdout
    exported = stack_env(stack)
    assert exported == {
        "RECSYS_TRACKING_URI": f"http://127.0.0.1:{stack['RECSYS_MLFLOW_PORT']}",
        "RECSYS_OPTUNA_STORAGE": f"postgresql+psycopg://recsys:test-pw@127.0.0.1:{stack['RECSYS_PG_PORT']}/optuna"}
    # bound to loopback only: PostgreSQL's own setting, as the server reports it
    import sqlalchemy

    engine = sqlalchemy.create_engine(exported["RECSYS_OPTUNA_STORAGE"])
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("show listen_addresses")).scalar() == "127.0.0.1"
        dbs = {r[0] for r in conn.execute(sqlalchemy.text("select datname from pg_database"))}
    engine.dispose()
    assert {"mlflow", "optuna"} <= dbs


@pytest.mark.realdata
def test_job_logs_to_the_tracking_server(stack, shared_data_dir, tmp_path):
    """README: `eval "$(scripts/stack.sh env)"` then `python run.py ...`: the run, its metrics and its artifacts are
    on the server (PostgreSQL + served artifacts), and nothing lands in a local mlruns/."""
    from mlflow.tracking import MlflowClient

    env = {**stack, "RECSYS_DATA_DIR": str(shared_data_dir), "RECSYS_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    job = " ".join([sys.executable, "run.py", f"hydra.run.dir={tmp_path}/out", *(f"'{a}'" for a in TINY)])
    proc = subprocess.run(["bash", "-c", f'set -e; eval "$(scripts/stack.sh env)"; {job}'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = stack_env(stack)["RECSYS_TRACKING_URI"]
    assert f"MLflow UI:  {uri}" in proc.stdout
    assert not (tmp_path / "mlruns").exists()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("recsys-compress")
    assert exp.artifact_location.startswith("mlflow-artifacts:")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert 0.0 < run.data.metrics["dense/hr_at_10"] <= 1.0
    assert run.data.metrics["data/n_users"] == 943
    # the readable run name (overridden keys only, numbers rounded) fits MLflow's VARCHAR(250) on PostgreSQL; a longer
    # one would be cut with the whole name kept in the full_run_name tag
    name = run.data.tags.get("full_run_name", run.info.run_name)
    assert len(run.info.run_name) <= 250 and name.startswith("neumf-ml-100k ") and "train.epochs=1" in name
    # the shipped model is registered on the server's Model Registry (pyfunc + id maps as served artifacts)
    assert [v.run_id for v in client.search_model_versions("name='neumf-ml-100k'")] == [run.info.run_id]
    got = Path(client.download_artifacts(run.info.run_id, "artifacts/dense.pt", str(tmp_path / "dl")))
    assert got.stat().st_size == run.data.metrics["dense/artifact_bytes"]
    served = Path(stack["RECSYS_STACK_DIR"]) / "artifacts" / exp.experiment_id / run.info.run_id / "artifacts"
    assert (served / "artifacts" / "dense.pt").read_bytes() == got.read_bytes()
    cfg = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "dl")))
    assert "ml-100k" in cfg.read_text()


WORKER = """
import sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(study_name="shared", storage=sys.argv[1], load_if_exists=True)
study.optimize(lambda t: (t.suggest_float("x", -10, 10) - 2) ** 2, n_trials=3)
print("done", len(study.trials))
"""


def test_optuna_study_shared_by_two_processes(stack):
    """Two worker processes at once on one study in the PostgreSQL storage: 6 complete trials, numbered 0..5 once."""
    import optuna

    storage = stack_env(stack)["RECSYS_OPTUNA_STORAGE"]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, storage], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(6))
    # and the project's sweep config reads the same storage from the environment
    from hydra import compose, initialize_config_dir

    os.environ["RECSYS_OPTUNA_STORAGE"] = storage
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            cfg = compose("config", overrides=["hparams_search=train_lr"], return_hydra_config=True)
        assert cfg.hydra.sweeper.storage == storage
    finally:
        del os.environ["RECSYS_OPTUNA_STORAGE"]


def test_three_workers_share_one_study_and_a_killed_trial_is_retried(stack, shared_data_dir, tmp_path):
    """README "Beyond one machine": the same sweep command started 3 times against the stack shares one study in
    PostgreSQL: exactly n_trials=3 COMPLETE trials in total (distinct numbers and params), each one FINISHED MLflow run
    nested under the study's single parent run. One worker is killed (-9, with its job) mid-trial: its trial goes stale
    (no heartbeat for grace_period=5 s), is failed and re-queued once, and another worker runs it. Three trials are
    the fewest that still make the two surviving workers share the study with the retried trial among them (each
    trial is a whole run.py job: the test's cost is trials x job, so the jobs are tiny too)."""
    import optuna
    from mlflow.tracking import MlflowClient

    n_trials, study_name = 3, "dist-ml-100k"
    env = {**stack, "RECSYS_DATA_DIR": str(shared_data_dir), "RECSYS_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    tiny = " ".join(f"'{a}'" for a in TINY + ["tracking.log_model=false", "bench.throughput_repeats=1",
                                               "bench.requests=5", "bench.warmup=1", "bench.full_catalogue_requests=1",
                                               "bench.throughput_batch=64"])
    sweep = (f"{sys.executable} run.py -m hparams_search=train_lr hydra.sweeper.storage=$RECSYS_OPTUNA_STORAGE "
             f"hydra.sweeper.n_jobs=1 hydra.sweeper.n_trials={n_trials} hydra.sweeper.study_name={study_name} "
             f"hydra.sweeper.heartbeat_interval=1 hydra.sweeper.grace_period=5 hydra.sweeper.poll_seconds=0.5 {tiny}")
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    procs = []
    for i, log in enumerate(logs):
        cmd = f'eval "$(scripts/stack.sh env)"; exec {sweep} hydra.sweep.dir={tmp_path}/multirun/w{i}'
        procs.append(subprocess.Popen(["bash", "-c", cmd], cwd=ROOT, env=env, stdout=log.open("w"),
                                      stderr=subprocess.STDOUT, start_new_session=True))
    # kill worker 0 (its process group: the sweeper and its job) one second after it launched its first trial
    import re
    import signal
    import time

    deadline, killed_lr = time.time() + 240, None
    while time.time() < deadline and killed_lr is None and procs[0].poll() is None:
        # the launch line "#<job index in the batch> : train.lr=<value> ...": the index is Hydra's (always 0 with
        # n_jobs=1), not the trial number, so the killed trial is found by its learning rate below
        m = re.search(r"\t#\d+ : train\.lr=(\S+) ", logs[0].read_text())
        if m:  # the trial is asked (RUNNING, first heartbeat sent) before its launch line: kill it at once, mid-trial
            os.killpg(procs[0].pid, signal.SIGKILL)
            killed_lr = float(m.group(1))
        time.sleep(0.2)
    assert killed_lr is not None, logs[0].read_text()[-3000:]
    procs[0].wait()
    for p, log in zip(procs[1:], logs[1:]):
        assert p.wait(timeout=400) == 0, log.read_text()[-4000:]

    storage = stack_env(stack)["RECSYS_OPTUNA_STORAGE"]
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == n_trials
    assert len({t.number for t in done}) == n_trials
    assert len({tuple(sorted(t.params.items())) for t in done}) == n_trials, [t.params for t in done]
    first = [t for t in trials if t.params.get("train.lr") == killed_lr]   # the killed trial, then its retry
    assert len(first) == 2, [(t.number, t.state, t.params) for t in trials]
    killed = first[0].number
    assert study.trials[killed].state == optuna.trial.TrialState.FAIL
    retry_of = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    retries = [t for t in trials if retry_of(t) is not None]
    assert [retry_of(t) for t in retries] == [killed]  # re-queued once, with the killed trial's params, and completed
    assert retries[0].state == optuna.trial.TrialState.COMPLETE and retries[0].params == study.trials[killed].params
    assert [t for t in trials if t.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)] == []

    client = MlflowClient(stack_env(stack)["RECSYS_TRACKING_URI"])
    exp = client.get_experiment_by_name("recsys-compress")
    parents = client.search_runs([exp.experiment_id], f"tags.optuna_study = '{study_name}' and "
                                 "tags.`recsys.kind` = 'study'")
    assert len(parents) == 1 and parents[0].info.run_id == study.user_attrs["mlflow_parent_run_id"]
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert len(children) == n_trials and all(r.info.status == "FINISHED" for r in children)
    assert sorted(int(r.data.tags["optuna_trial"]) for r in children) == sorted(t.number for t in done)
    assert {r.info.run_id for r in children} == {t.user_attrs["mlflow_run_id"] for t in done}
    outs = "".join(log.read_text() for log in logs[1:])
    assert outs.count(f"[sweep] done: {n_trials} complete trials") == 2
