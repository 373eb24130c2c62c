"""Hydra multirun through the real entry point: one experiment, one run per job, told apart by name and sweep tags,
safe when two jobs start at once on a fresh MLflow store (joblib launcher)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.epochs=1", "train.batch_size=8192", "model.factors=4", "model.mlp_layers=[8,4]", "bench.requests=30",
        "bench.warmup=5", "bench.full_catalogue_requests=3", "bench.throughput_repeats=2", "bench.throughput_batch=512",
        "trainer.enable_progress_bar=false", "eval.full_ranking=false", "tracking.log_model=false"]


@pytest.mark.realdata
def test_parallel_multirun_lands_in_one_experiment(tmp_path, shared_data_dir):
    env = {**os.environ, "RECSYS_DATA_DIR": str(shared_data_dir), "RECSYS_ROOT": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           f"hydra.sweep.dir={tmp_path}/multirun", "train.lr=0.001,0.002", *TINY]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("recsys-compress")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2
    names = sorted(r.info.run_name for r in runs)
    assert names[0].startswith("neumf-ml-100k ") and "train.lr=0.001" in names[0] and "train.lr=0.002" in names[1]
    assert {r.data.tags["hydra_mode"] for r in runs} == {"MULTIRUN"}
    assert len({r.data.tags["sweep_dir"] for r in runs}) == 1
    assert sorted(r.data.tags["job_num"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" and "dense/hr_at_10" in r.data.metrics for r in runs)
    assert "MLflow UI:" in proc.stdout
