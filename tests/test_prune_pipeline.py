"""Integration: prune jobs through Hydra's compose API on ml-100k (tiny model, 1 epoch) into a temporary MLflow store —
the dense model is trained once and hit from the cache by the second job, every stage is logged, the shipped artifacts
reload to identical scores (checked by the pipeline) and have the encoding and shape the method promises."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from recsys.errors import ConfigError
from recsys.export.artifact import load_artifact
from recsys.pipeline import run

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def make_cfg(tmp_path: Path, data_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[
            f"paths.root_dir={tmp_path}", f"paths.data_dir={data_dir}", "data=ml-100k",
            "train.epochs=1", "model.factors=4", "model.mlp_layers=[8,4]", "finetune.epochs=1",
            "bench.requests=50", "bench.warmup=5", "bench.full_catalogue_requests=3", "bench.throughput_repeats=2",
            "bench.throughput_batch=512", "trainer.enable_progress_bar=false", "tracking.log_model=false", *overrides])


@pytest.mark.realdata
def test_prune_jobs_share_the_dense_model_and_ship_real_artifacts(tmp_path, shared_data_dir):
    run(make_cfg(tmp_path, shared_data_dir, "prune=magnitude", "prune.ratio=0.6"))
    run(make_cfg(tmp_path, shared_data_dir, "prune=structured", "prune.ratio=0.5"))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("recsys-compress")
    mag, st = sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.start_time)
    assert [r.data.metrics["dense/cache_hit"] for r in (mag, st)] == [0.0, 1.0]
    assert mag.data.metrics["dense/hr_at_10"] == st.data.metrics["dense/hr_at_10"]
    for r in (mag, st):
        for key in ("pruned/hr_at_10", "finetuned/hr_at_10", "finetuned/train_seconds", "final/artifact_bytes",
                    "final/speedup_p50", "final/compression_ratio", "final/latency_full_p50_ms"):
            assert key in r.data.metrics, key
    m = mag.data.metrics
    assert mag.data.tags["artifact_format"] == "sparse"
    assert m["final/prune_target_sparsity"] == pytest.approx(0.6, abs=1e-5)
    assert m["final/artifact_bytes"] < m["dense/artifact_bytes"]
    assert m["final/params_total"] == m["dense/params_total"] > m["final/params_nonzero"]
    s = st.data.metrics
    assert st.data.tags["artifact_format"] == "dense"
    assert s["final/pruned_factors"] == 2 and s["final/pruned_mlp_width"] == 4
    assert s["final/params_total"] < 0.6 * s["dense/params_total"]
    # the shipped artifact is the smaller NeuMF: its spec rebuilds the shrunk shapes
    path = Path(client.download_artifacts(st.info.run_id, "artifacts/compressed.pt", str(tmp_path / "dl")))
    small = load_artifact(path)
    assert small.config()["factors"] == 2 and small.config()["mlp_layers"] == [4, 2]
    assert torch.isfinite(small.score(torch.tensor([0, 1]), torch.tensor([3, 4]))).all()
    mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("overrides,needle", [
    (("prune=magnitude", "prune.ratio=1.0"), "prune.ratio=1.0"),
    (("prune=magnitude", "prune.targets=bias"), "prune.targets='bias'"),
    (("prune=structured", "prune.ratio=0.9", "model.mlp_layers=[8,2]"), "empty"),
    (("prune=magnitude", "prune.schedule=gradual", "finetune.epochs=0"), "finetune.epochs=0"),
])
def test_bad_prune_config_fails_before_training(tmp_path, overrides, needle):
    cfg = make_cfg(tmp_path, tmp_path, *overrides)
    with pytest.raises(ConfigError) as e:
        run(cfg)
    assert needle in str(e.value)
    assert not (tmp_path / ".cache" / "dense").exists()     # nothing was trained
