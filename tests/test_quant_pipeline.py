"""Integration: quantization jobs through Hydra's compose API on ml-100k (tiny model, 1 epoch), read back from MLflow."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from recsys.export.artifact import load_artifact
from recsys.nn.quantized import QuantizedEmbedding, QuantizedLinear
from recsys.pipeline import run

CONF = str(Path(__file__).resolve().parents[1] / "conf")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quant")   # shared by the jobs below, so the dense model is trained once


def _run(root: Path, data_dir: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            f"paths.root_dir={root}", f"paths.data_dir={data_dir}", "data=ml-100k", "train.epochs=1",
            "model.factors=4", "model.mlp_layers=[8,4]", "bench.requests=50", "bench.warmup=5",
            "bench.full_catalogue_requests=3", "bench.throughput_repeats=2", "bench.throughput_batch=512",
            "trainer.enable_progress_bar=false", "tracking.log_model=false", *overrides])
    run(cfg)
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("recsys-compress")
    return max(client.search_runs([exp.experiment_id]), key=lambda r: r.info.start_time)


@pytest.mark.realdata
def test_ptq_int4_ships_packed_bytes_and_logs_backends(root, shared_data_dir):
    r = _run(root, shared_data_dir, "quant=ptq", "quant.bits=4", "finetune.epochs=0", "bench.backends=[eager,onnx]")
    m, tags = r.data.metrics, r.data.tags
    assert tags["artifact_format"] == "quantized" and tags["quant_scheme"] == "int4-symmetric-channel"
    assert tags["latency_backend"].startswith("pytorch-eager") and tags["bench_backends"] == "eager,onnx"
    # 4-wide rows here: the fp16 row scale costs as much as the 4-bit codes, so ~4x on tables (ml-1m rows: ~7x)
    assert m["final/compression_ratio"] > 3.0 and m["final/quant_embedding_ratio"] > 3.5
    for key in ("ptq/hr_at_10", "final/latency_p50_ms_onnx", "dense/latency_p50_ms_onnx", "final/score_gap_onnx"):
        assert key in m, key
    assert m["dense/score_gap_onnx"] < 1e-4   # ORT fp32 serves the same weights
    # the quantized artifact's int8 kernels also quantize activations; ORT fp32 runs its dequantized weights only
    assert 0 < m["final/score_gap_onnx"] < 0.1
    assert abs(m["final/hr_at_10"] - m["dense/hr_at_10"]) < 0.1
    art = [a for a in MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db").list_artifacts(r.info.run_id, "artifacts")
           if a.path.endswith("compressed.pt")][0]
    assert art.file_size == m["final/artifact_bytes"]


@pytest.mark.realdata
def test_qat_int2_runs_the_callback_and_reloads_integer_modules(root, shared_data_dir):
    r = _run(root, shared_data_dir, "quant=qat", "quant.bits=2", "quant.activations=static", "quant.backend=eager",
             "finetune.epochs=1", "finetune.data_fraction=0.05")
    m = r.data.metrics
    assert {"qat/hr_at_10", "finetuned/hr_at_10", "final/quant_modules"} <= set(m)
    assert m["final/quant_modules"] == 6 and m["final/compression_ratio"] > 3.5
    path = next(Path(r.info.artifact_uri.removeprefix("file://")).glob("artifacts/compressed.pt"))
    model = load_artifact(path)
    mods = [x for x in model.modules() if isinstance(x, (QuantizedEmbedding, QuantizedLinear))]
    assert len(mods) == 6 and all(x.q.bits == 2 for x in mods)
    assert all(x.activations == "static" and float(x.act_scale) != 1.0 for x in mods if isinstance(x, QuantizedLinear))
    assert model.mlp.user_embedding.weight.unique().numel() <= 4 * model.n_users
    assert torch.isfinite(model.score(torch.tensor([0, 1]), torch.tensor([2, 3]))).all()
