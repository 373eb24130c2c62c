"""experiments/serve_load.py runs end to end at tiny size (--quick): four models trained, registered, each served by
``mlflow models serve`` and loaded by the asyncio client at two concurrencies and two request kinds; every cell answered
without errors and logged as a child run of the load test's parent run (experiment ``serve_load``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.realdata
@pytest.mark.slow
def test_serve_load_quick_runs_every_cell(tmp_path, shared_data_dir):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "RECSYS_DATA_DIR": str(shared_data_dir), "RECSYS_ROOT": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "serve_load.py"), "--quick", "--uri", uri,
                           "--overrides", f"paths.root_dir={tmp_path}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("serve_load")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    cells = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and len(cells) == 4 * 2 * 2
    assert {(r.data.params["model"], r.data.params["kind"], r.data.params["concurrency"]) for r in cells} == {
        (m, k, c) for m in ("dense", "int8", "structured", "kd") for k in ("full", "candidates") for c in ("1", "4")}
    for r in cells:
        m = r.data.metrics
        assert m["errors"] == 0 and m["requests"] == 20 and m["requests_per_s"] > 0, (r.info.run_name, m)
        assert m["p99_ms"] >= m["p50_ms"] > 0 and m["inprocess_p99_ms"] >= m["inprocess_p50_ms"] > 0
        assert m["server_cpu_percent"] > 0 and m["overhead_p50_ms"] == pytest.approx(m["p50_ms"] - m["inprocess_p50_ms"])
    versions = client.search_model_versions("name='neumf-ml-100k'")
    assert len(versions) == 4 and {v.tags["stage"] for v in versions} == {"dense", "shipped"}
    assert "| model | request | concurrency | req/s |" in proc.stdout and "server overhead p50 ms" in proc.stdout
    assert proc.stdout.index("load phase <= ") < proc.stdout.index("trained and registered 4 models")  # bound first
    assert {"provenance.commit", "provenance.cpu", "provenance.torch"} <= set(parent[0].data.tags)
