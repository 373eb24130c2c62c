"""Integration: a job composed through Hydra's compose API, run into a temporary MLflow store, read back."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from recsys.errors import ConfigError
from recsys.pipeline import run

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def make_cfg(tmp_path: Path, data_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[
            f"paths.root_dir={tmp_path}", f"paths.data_dir={data_dir}",
            "train.epochs=2", "train.batch_size=4096", "model.factors=8", "model.mlp_layers=[16,8]",
            "bench.requests=50", "bench.warmup=10", "bench.full_catalogue_requests=5", "bench.throughput_repeats=3",
            "bench.throughput_batch=1024", "trainer.enable_progress_bar=false", "tracking.log_model=false", *overrides])


@pytest.mark.realdata
def test_job_logs_metrics_params_artifacts_and_returns_objective(tmp_path, shared_data_dir):
    cfg = make_cfg(tmp_path, shared_data_dir, "data=ml-100k", "objectives=[final/val_hr_at_10,final/artifact_bytes]")
    objective = run(cfg)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("recsys-compress")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    r = runs[0]
    m = r.data.metrics
    for key in ("dense/hr_at_10", "dense/ndcg_at_10", "dense/recall_at_10", "dense/val_hr_at_10",
                "dense/artifact_bytes", "dense/params_total", "dense/params_nonzero", "dense/latency_p50_ms",
                "dense/latency_p99_ms", "dense/latency_full_p50_ms", "dense/throughput_per_s", "dense/train_seconds",
                "dense/epoch_train_loss", "final/hr_at_10"):
        assert key in m, key
    assert 0.0 < m["dense/hr_at_10"] <= 1.0
    # a trained NeuMF must beat popularity-blind chance (10/100) clearly, even after 2 epochs
    assert m["dense/hr_at_10"] > 0.2
    assert objective == (pytest.approx(m["final/val_hr_at_10"]), pytest.approx(m["final/artifact_bytes"]))
    # per-epoch curve from Lightning's MLFlowLogger landed in the same run
    hist = client.get_metric_history(r.info.run_id, "dense/epoch_val_hr_at_10")
    assert len(hist) == 2
    assert r.data.params["train.epochs"] == "2" and r.data.params["model.factors"] == "8"
    assert r.data.tags["dataset"] == "ml-100k" and len(r.data.tags["dataset_checksum"]) == 64
    arts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "results.md", "artifacts"} <= arts
    dense_pt = client.list_artifacts(r.info.run_id, "artifacts")[0]
    assert dense_pt.file_size == m["dense/artifact_bytes"]
    assert m["dense/params_total"] == m["dense/params_nonzero"] > 0
    mlflow.set_tracking_uri(None)  # leave no global state for other tests


@pytest.mark.realdata
def test_second_job_hits_the_dense_cache(tmp_path, shared_data_dir):
    run(make_cfg(tmp_path, shared_data_dir, "train.epochs=1"))
    run(make_cfg(tmp_path, shared_data_dir, "train.epochs=1", "bench.threads=2"))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("recsys-compress")
    runs = sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.start_time)
    assert [r.data.metrics["dense/cache_hit"] for r in runs] == [0.0, 1.0]
    assert runs[0].data.metrics["dense/hr_at_10"] == runs[1].data.metrics["dense/hr_at_10"]


@pytest.mark.parametrize("override,needle", [
    ("train.epochs=-1", "train.epochs=-1"),
    ("train.batch_size=12.5", "train.batch_size=12.5"),
    ("model.factors=0", "model.factors=0"),
    ("model.mlp_layers=[15,8]", "model.mlp_layers"),
    ("train.optimizer=rmsprop", "train.optimizer='rmsprop'"),
    ("train.lr=0", "train.lr=0"),
    ("train.sparse=yes", "train.sparse='yes'"),
    ("train.sparse=true train.optimizer=adagrad", "train.sparse=true: needs train.optimizer=adam or sgd"),
])
def test_bad_config_fails_before_training(tmp_path, override, needle):
    cfg = make_cfg(tmp_path, tmp_path, "data=ml-100k", *override.split())
    with pytest.raises(ConfigError, match=None) as e:
        run(cfg)
    assert needle in str(e.value)
    assert not (tmp_path / "mlruns").exists()  # nothing started, nothing logged


def test_missing_data_dir_names_the_files(tmp_path, monkeypatch):
    import urllib.request

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.delenv("RECSYS_DATA_DIR", raising=False)
    cfg = make_cfg(tmp_path, tmp_path / "nowhere", "data=ml-1m-loo")
    with pytest.raises(ConfigError) as e:
        run(cfg)
    assert "train.tsv" in str(e.value) and "RECSYS_DATA_DIR" in str(e.value)


def test_unknown_model_name_is_a_hydra_error_listing_options(tmp_path):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as e:
        make_cfg(tmp_path, tmp_path, "model=resnet")
    assert "neumf" in str(e.value)


@pytest.mark.parametrize("overrides,needle", [
    (["bench.backends=[eager,tensorrt]"], "bench.backends"),
    (["model=gru4rec", "data=yoochoose", "bench.backends=[eager,onnx]"], "session models are measured"),
])
def test_bad_bench_backends_fail_before_training(tmp_path, overrides, needle):
    from recsys.errors import ConfigError
    from recsys.pipeline import run

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.root_dir={tmp_path}", f"paths.data_dir={tmp_path}", *overrides])
    with pytest.raises(ConfigError, match=needle):
        run(cfg)
    assert not (tmp_path / "mlruns").exists()
