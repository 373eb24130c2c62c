"""The headline commands (issue 16, item 8), run as typed through the real entry point with only tiny-size overrides
appended: the default prune config is magnitude pruning at ratio 0 (no pruning stage), so prune.ratio sweeps and the
documented hparams_search=prune_lr work without naming prune=magnitude."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from recsys.compress.base import active_groups, configured
from recsys.pipeline import validate
from recsys.sweep_tracking import KIND_TAG

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.epochs=1", "train.batch_size=8192", "model.factors=4", "model.mlp_layers=[8,4]", "bench.requests=30",
        "bench.warmup=5", "bench.full_catalogue_requests=3", "bench.throughput_repeats=2", "bench.throughput_batch=512",
        "trainer.enable_progress_bar=false", "eval.full_ranking=false", "tracking.log_model=false",
        "finetune.data_fraction=0.05"]


def run_command(command: str, tmp_path: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """``python run.py ...`` exactly as documented, tiny overrides appended, into a temporary store and cache."""
    args = shlex.split(command)
    assert args[:2] == ["python", "run.py"]
    env = {**os.environ, "RECSYS_DATA_DIR": str(data_dir), "RECSYS_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "run.py"), *args[2:], f"hydra.sweep.dir={tmp_path}/multirun", *TINY, *extra]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


def finished_runs(tmp_path: Path) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_default_prune_is_ratio_zero_magnitude_and_no_stage(tmp_path):
    conf = str(ROOT / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        default = validate(compose("config", overrides=[f"paths.root_dir={tmp_path}"]))
        swept = validate(compose("config", overrides=[f"paths.root_dir={tmp_path}", "prune.ratio=0.4"]))
        named = validate(compose("config", overrides=[f"paths.root_dir={tmp_path}", "prune=magnitude"]))
    assert default["prune"]["method"] == "magnitude" and default["prune"]["ratio"] == 0.0
    assert configured(default) == [] and active_groups(default) == []     # ratio 0: no stage, not compressed
    assert [t.method for t in configured(swept)] == ["magnitude"] and swept["prune"]["ratio"] == 0.4
    assert named["prune"]["ratio"] == 0.4                                   # prune=magnitude keeps its own 40 %


@pytest.mark.realdata
def test_prune_ratio_sweep_runs_as_typed(tmp_path, shared_data_dir):
    p = run_command("python run.py -m prune.ratio=0.2,0.4,0.6", tmp_path, shared_data_dir, "finetune.epochs=0")
    assert p.returncode == 0, p.stderr[-3000:]
    runs = finished_runs(tmp_path)
    assert sorted(float(r.data.params["prune.ratio"]) for r in runs) == [0.2, 0.4, 0.6]
    for r in runs:
        assert r.info.status == "FINISHED"
        ratio = float(r.data.params["prune.ratio"])
        assert r.data.params["prune.method"] == "magnitude"
        assert r.data.metrics["final/prune_target_sparsity"] == pytest.approx(ratio, abs=1e-3)
        assert r.data.metrics["final/params_nonzero"] < r.data.metrics["dense/params_nonzero"]


@pytest.mark.realdata
def test_hparams_search_prune_lr_runs_as_typed(tmp_path, shared_data_dir):
    p = run_command("python run.py -m hparams_search=prune_lr", tmp_path, shared_data_dir,
                    "hydra.sweeper.n_trials=2", "finetune.epochs=1")
    assert p.returncode == 0, p.stderr[-3000:]
    runs = finished_runs(tmp_path)
    assert all(r.info.status == "FINISHED" for r in runs)
    study = [r for r in runs if r.data.tags.get(KIND_TAG) == "study"]
    trials = [r for r in runs if r.data.tags.get(KIND_TAG) != "study"]
    assert len(study) == 1 and len(trials) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {study[0].info.run_id}
    for r in trials:
        assert 0.1 <= float(r.data.params["prune.ratio"]) <= 0.95
        assert "finetuned/hr_at_10" in r.data.metrics and "final/artifact_bytes" in r.data.metrics
    assert (tmp_path / "mlruns" / "optuna.db").exists()
