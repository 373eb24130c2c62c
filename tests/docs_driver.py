"""Run documented commands one after another in this one process (the imports are paid once), each as its own
``__main__``: ``run.py`` and ``experiments/*.py`` through runpy with their own argv, ``python -m recsys.x`` through
runpy's module mode. A script's ``subprocess.call([python, run.py, ...])`` runs the same way, in this process (what
the child would do, minus a second interpreter start). After each command the MLflow store is read and the runs that
command created are reported.

    python tests/docs_driver.py SPEC.json OUT.json

SPEC: {"cwd": dir, "env": {...}, "uri": MLflow store to read, "commands": [{"command": text, "argv": [...]}, ...]};
argv[0] is a script path or ``-m``. OUT: one record per command (rc, seconds, output tail, error, new runs)."""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_real_call = subprocess.call


def _clear_hydra() -> None:
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()


def run_argv(argv: list[str]) -> int:
    """``python <argv>`` as __main__ in this process; its exit status."""
    saved = sys.argv[:]
    _clear_hydra()
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
        _clear_hydra()
        import mlflow

        while mlflow.active_run() is not None:   # a job that left its run open is reported by its status, not leaked
            mlflow.end_run("FAILED")


def _call(cmd, *args, cwd=None, env=None, **kw):
    """subprocess.call, except ``[python, run.py, ...]`` runs in this process (same cwd / env, restored after)."""
    if (isinstance(cmd, (list, tuple)) and len(cmd) > 1 and cmd[0] == sys.executable
            and Path(str(cmd[1])).name == "run.py" and not args and not kw):
        here, saved_env = os.getcwd(), dict(os.environ)
        try:
            if cwd is not None:
                os.chdir(cwd)
            if env is not None:
                os.environ.clear()
                os.environ.update(env)
            return run_argv([str(c) for c in cmd[1:]])
        finally:
            os.chdir(here)
            os.environ.clear()
            os.environ.update(saved_env)
    return _real_call(cmd, *args, cwd=cwd, env=env, **kw)


def _runs(uri: str) -> dict[str, dict]:
    """Every run of the store: id -> what the checks need."""
    from mlflow.tracking import MlflowClient

    if not Path(uri.removeprefix("sqlite:///")).exists():
        return {}
    c = MlflowClient(uri)
    out = {}
    for e in c.search_experiments():
        for r in c.search_runs([e.experiment_id], max_results=5000):
            out[r.info.run_id] = {"experiment": e.name, "status": r.info.status, "name": r.info.run_name,
                                  "tags": {k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.") or
                                           k == "mlflow.parentRunId"},
                                  "params": dict(r.data.params), "metrics": dict(r.data.metrics),
                                  "artifact_uri": r.info.artifact_uri}
    return out


def main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    os.environ.update(spec["env"])
    sys.path.insert(0, str(ROOT))
    subprocess.call = _call
    results = []
    log_dir = Path(out_path).with_suffix(".logs")
    log_dir.mkdir(exist_ok=True)
    seen = set(_runs(spec["uri"]))
    for i, item in enumerate(spec["commands"]):
        os.chdir(spec["cwd"])
        log = log_dir / f"{i:02d}.log"
        sys.stdout.flush()
        sys.stderr.flush()
        fd_out, fd_err = os.dup(1), os.dup(2)
        with open(log, "w") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            t0 = time.perf_counter()
            err = None
            try:
                rc = run_argv(item["argv"])
            except BaseException:   # noqa: BLE001 - reported with the command's text, the next command still runs
                rc, err = 1, traceback.format_exc()
            secs = time.perf_counter() - t0
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(fd_out, 1)
            os.dup2(fd_err, 2)
        os.close(fd_out)
        os.close(fd_err)
        runs = _runs(spec["uri"])
        new = {k: v for k, v in runs.items() if k not in seen}
        seen |= set(new)
        results.append({"command": item["command"], "rc": rc, "seconds": round(secs, 2), "error": err,
                        "output_tail": log.read_text(errors="replace")[-4000:], "runs": new})
        print(f"[{rc}] {secs:6.1f}s {item['command']}", flush=True)
        Path(out_path).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
