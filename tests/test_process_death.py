"""Process death (issue 16, item 3) with real subprocesses and real signals: SIGTERM / SIGINT end the MLflow run KILLED
with the signal named and exit 143 / 130, temp checkpoint folders removed; a run left RUNNING by kill -9 is reaped by
the next job on the store; a killed sweep's workers stop with their parent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from recsys import lifecycle, tracking
from recsys.sweep_tracking import KIND_TAG

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.batch_size=8192", "model.factors=4", "model.mlp_layers=[8,4]", "bench.requests=30", "bench.warmup=5",
        "bench.full_catalogue_requests=3", "bench.throughput_repeats=2", "bench.throughput_batch=512",
        "trainer.enable_progress_bar=false", "eval.full_ranking=false", "tracking.log_model=false"]
LONG = ["train.epochs=200", *TINY]   # long enough to be signalled mid-training; never runs to the end


def job_env(root: Path, data_dir: Path) -> dict[str, str]:
    return {**os.environ, "RECSYS_DATA_DIR": str(data_dir), "RECSYS_ROOT": str(root), "OMP_NUM_THREADS": "1"}


def store_runs(root: Path) -> list:
    db = root / "mlruns" / "mlflow.db"
    if not db.exists():
        return []
    client = MlflowClient(f"sqlite:///{db}")
    try:
        return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    except Exception:  # noqa: BLE001 - the store is being created by the job right now
        return []


def ckpt_dirs(root: Path) -> list[Path]:
    return sorted((root / ".cache").glob("ckpt-*"))


def start_and_wait_training(cmd: list[str], root: Path, env: dict[str, str], timeout: float = 600
                            ) -> subprocess.Popen:
    """Start ``cmd`` and return once its MLflow run is RUNNING (polling the store) and its checkpoint folder exists."""
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"job ended before it was signalled: {proc.stdout.read()[-3000:]}")
        # the store is read only once training runs: opening it while the job creates it races sqlite's migration
        if ckpt_dirs(root) and any(r.info.status == "RUNNING" for r in store_runs(root)):
            return proc
        time.sleep(0.5)
    proc.kill()
    pytest.fail("job never reached a RUNNING run in training")


@pytest.mark.realdata
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_ends_run_killed_with_exit_status(tmp_path, shared_data_dir, sig, code):
    proc = start_and_wait_training([sys.executable, str(ROOT / "run.py"), *LONG], tmp_path,
                                   job_env(tmp_path, shared_data_dir))
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    name = signal.Signals(sig).name
    assert proc.returncode == code, out[-3000:]
    (run,) = store_runs(tmp_path)
    assert run.info.status == "KILLED"
    assert run.data.tags["killed_by_signal"] == name
    assert name in run.data.tags["mlflow.note.content"] and name in run.data.tags["failure"]
    assert run.data.tags["process.pid"] == str(proc.pid)
    assert run.data.tags["process.host"] == lifecycle.hostname()
    assert not ckpt_dirs(tmp_path)                                  # the stage's checkpoint folder is gone
    assert not list((tmp_path / ".cache" / "dense").glob("*.pt"))   # an interrupted dense model is not cached
    assert f"interrupted by {name}" in out


@pytest.mark.realdata
def test_kill9_run_is_reaped_by_next_job(tmp_path, shared_data_dir):
    env = job_env(tmp_path, shared_data_dir)
    proc = start_and_wait_training([sys.executable, str(ROOT / "run.py"), *LONG], tmp_path, env)
    proc.kill()
    proc.wait(timeout=60)
    (run,) = store_runs(tmp_path)
    assert run.info.status == "RUNNING" and ckpt_dirs(tmp_path)   # what kill -9 leaves behind
    nxt = subprocess.run([sys.executable, str(ROOT / "run.py"), "train.epochs=1", *TINY], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert nxt.returncode == 0, nxt.stderr[-3000:]
    runs = {r.info.run_id: r for r in store_runs(tmp_path)}
    dead = runs[run.info.run_id]
    assert dead.info.status == "FAILED"
    assert f"pid {proc.pid}" in dead.data.tags["mlflow.note.content"] and "reaped" in dead.data.tags["failure"]
    assert [r.info.status for i, r in runs.items() if i != run.info.run_id] == ["FINISHED"]
    assert not ckpt_dirs(tmp_path)                                  # the dead job's checkpoint folder is removed
    assert "left RUNNING by a dead process" in nxt.stdout


def test_liveness_survives_pid_reuse(tmp_path):
    """A pid alive again under another process (other start time) counts as dead; a live one with its own start time,
    another host's run, or a run without tags is never reaped."""
    me = lifecycle.identity()
    assert not lifecycle.is_dead(me["process.host"], me["process.pid"], me["process.start"])
    assert lifecycle.is_dead(me["process.host"], me["process.pid"], "some-other-boot:1")
    assert not lifecycle.is_dead("another-host", "1", "x:1")
    assert not lifecycle.is_dead(me["process.host"], None, None)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert lifecycle.is_dead(me["process.host"], str(child.pid), "x:1")


def test_reaper_marks_only_dead_runs_of_this_host(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = tracking.init_store(uri, "e")
    client = MlflowClient(uri)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    me = lifecycle.identity()
    cases = {"dead": {**me, "process.pid": str(child.pid)}, "alive": me,
             "other-host": {**me, "process.host": "elsewhere", "process.pid": str(child.pid)}, "untagged": {}}
    ids = {k: client.create_run(exp, tags=v, run_name=k).info.run_id for k, v in cases.items()}
    assert tracking.reap_dead_runs(uri) == [ids["dead"]]
    status = {k: client.get_run(i).info.status for k, i in ids.items()}
    assert status == {"dead": "FAILED", "alive": "RUNNING", "other-host": "RUNNING", "untagged": "RUNNING"}


def test_reaper_leaves_a_run_another_job_is_reaping(tmp_path, monkeypatch):
    """Two jobs starting at once may reap the same dead run; the tracking server's tag insert is not atomic (on
    PostgreSQL the second "failure" insert violates the tag key). The job that loses the race skips that run, while a
    failure on a run nobody reaped is raised."""
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = tracking.init_store(uri, "e")
    client = MlflowClient(uri)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    run_id = client.create_run(exp, tags={**lifecycle.identity(), "process.pid": str(child.pid)}).info.run_id
    original = MlflowClient.set_tag

    def other_job_first(self, rid, key, value, *a, **kw):   # the other job's insert lands first, ours then fails
        original(self, rid, key, "reaped by the other job")
        raise MlflowException("duplicate key value violates unique constraint \"tag_pk\"")

    monkeypatch.setattr(MlflowClient, "set_tag", other_job_first)
    assert tracking.reap_dead_runs(uri) == []
    assert client.get_run(run_id).data.tags["failure"] == "reaped by the other job"

    run2 = client.create_run(exp, tags={**lifecycle.identity(), "process.pid": str(child.pid)}).info.run_id

    def broken(self, rid, key, value, *a, **kw):   # a failure with no other reaper: raised
        raise MlflowException("server down")

    monkeypatch.setattr(MlflowClient, "set_tag", broken)
    with pytest.raises(MlflowException, match="server down"):
        tracking.reap_dead_runs(uri)
    assert "failure" not in client.get_run(run2).data.tags


def _alive(pid: int) -> bool:
    """Exists and is not a zombie (a container's pid 1 may never reap re-parented children)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(p.name))
    return out


@pytest.mark.realdata
def test_killed_sweep_stops_its_workers(tmp_path, shared_data_dir):
    """python run.py -m hparams_search=prune_lr (joblib, n_jobs=2), parent killed -9 while trials train: the workers
    end within seconds, their runs KILLED, none FINISHED afterwards."""
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "hparams_search=prune_lr", "hydra.sweeper.n_trials=2",
           f"hydra.sweep.dir={tmp_path}/multirun", *LONG]
    proc = start_and_wait_training(cmd, tmp_path, job_env(tmp_path, shared_data_dir))
    workers = _children(proc.pid)   # joblib's loky workers (and its resource tracker)
    assert workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    t0 = time.time()
    while time.time() - t0 < 60 and any(_alive(w) for w in workers):
        time.sleep(0.5)
    alive = [w for w in workers if _alive(w)]
    assert not alive, f"workers still alive after their launcher died: {alive}"
    runs = store_runs(tmp_path)
    trials = [r for r in runs if r.data.tags.get(KIND_TAG) != "study"]
    assert trials and not [r for r in trials if r.info.status in ("FINISHED", "RUNNING")], \
        [(r.info.run_name, r.info.status) for r in runs]
    assert {r.data.tags.get("killed_by_signal") for r in trials} == {"SIGTERM"}
    # the study's parent run belonged to the dead launcher: the next job on the store marks it FAILED
    (study,) = [r for r in runs if r.data.tags.get(KIND_TAG) == "study"]
    assert study.data.tags["process.pid"] == str(proc.pid)
    tracking.reap_dead_runs(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert {r.info.status for r in store_runs(tmp_path)} <= {"KILLED", "FAILED"}
