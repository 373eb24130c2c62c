"""Quantization of GRU4Rec's nn.GRU (``quant.targets`` with ``gru``): output error of the eager and the dynamic int8
(PyTorch) runtimes, packed bytes, artifact reload bit-identity, QAT through the GRU, bad configs, one pipeline job."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from torch import nn

from recsys.compress.quant import QuantConfig, attach_fake_quant, is_converted, quant_summary, quantize_
from recsys.export.artifact import load_artifact, save_artifact
from recsys.export.quantized import expected_table_nbytes, stored_nbytes
from recsys.models.gru4rec import GRU4Rec, sampled_loss
from recsys.models.ncf import NeuMF
from recsys.nn.qtensor import dequantize, packed_nbytes, quantize_tensor
from recsys.nn.quantized import QuantizedEmbedding, QuantizedGRU, QuantizedLinear, activations_overflow

CONF = str(Path(__file__).resolve().parents[1] / "conf")
ALL = ("embeddings", "linear", "gru")
MATRICES = ("weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1")


def _gru_and_inputs(seed: int = 0) -> tuple[nn.GRU, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    gru = nn.GRU(24, 32, num_layers=2).eval()
    return gru, torch.randn(6, 16, 24), torch.randn(2, 16, 32) * 0.3


def _quantized(gru: nn.GRU, bits: int, scheme: str, backend: str) -> QuantizedGRU:
    m = nn.Sequential(copy.deepcopy(gru))
    quantize_(m, QuantConfig(bits=bits, scheme=scheme, backend=backend, targets=("gru",)))
    assert isinstance(m[0], QuantizedGRU) and m[0].backend == backend
    return m[0].eval()


# bounds on max |out - fp32 out| relative to max |fp32 out| (outputs are tanh-bounded): measured ~0.004 (8-bit),
# 0.06-0.08 (4-bit), 0.34-0.40 (2-bit) on these weights (seeds 0-2)
@pytest.mark.parametrize("bits,bound", [(8, 0.01), (4, 0.12)])
@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
def test_eager_gru_is_the_fp32_gru_on_dequantized_weights(bits, bound, scheme):
    gru, x, h0 = _gru_and_inputs()
    with torch.no_grad():
        ref, h_ref = gru(x, h0)
        q = _quantized(gru, bits, scheme, "eager")
        out, h = q(x, h0)
        # exactly nn.GRU's math on the dequantized matrices (biases untouched)
        twin = copy.deepcopy(gru)
        for n in MATRICES:
            setattr(twin, n, nn.Parameter(dequantize(q.q[n])))
        assert torch.equal(out, twin(x, h0)[0]) and torch.equal(h, twin(x, h0)[1])
    assert torch.equal(h[-1], out[-1])
    assert (out - ref).abs().max() <= bound * ref.abs().max()
    assert (h - h_ref).abs().max() <= bound * h_ref.abs().max()
    # per-row (per gate unit) scales, codes within the width
    assert all(q.q[n].scale.numel() == 96 and int(q.q[n].codes.max()) < 2 ** bits for n in MATRICES)


@pytest.mark.parametrize("bits,scheme", [(8, "symmetric"), (8, "asymmetric"), (4, "symmetric"), (2, "asymmetric")])
def test_torch_dynamic_int8_gru_runs_our_codes(bits, scheme):
    """The dynamic int8 kernel is built from the stored codes/scales (not re-derived from floats): it deviates from
    the eager module on the same codes only by its per-call int8 activations (~0.5 % of the output), at any width."""
    gru, x, h0 = _gru_and_inputs()
    with torch.no_grad():
        ref = gru(x, h0)[0]
        eager = _quantized(gru, bits, scheme, "eager")(x, h0)[0]
        mod = _quantized(gru, bits, scheme, "torch")
        out, h = mod(x, h0)
        assert torch.equal(out, mod(x, h0)[0])                       # deterministic
    assert out.shape == ref.shape and torch.equal(h[-1], out[-1])
    assert (out - eager).abs().max() <= 0.02 * eager.abs().max()
    if bits == 8:
        assert (out - ref).abs().max() <= 0.02 * ref.abs().max()
    with torch.inference_mode():                                     # serving path; unbatched input as nn.GRU
        o1, h1 = mod(x[:, 0], h0[:, 0])
        assert o1.shape == (6, 32) and h1.shape == (2, 32)


def test_torch_backend_rejects_codebooks():
    gru, _, _ = _gru_and_inputs()
    q = {n: quantize_tensor(getattr(gru, n).detach(), 4, "kmeans") for n in MATRICES}
    with pytest.raises(ValueError, match="torch"):
        QuantizedGRU(q, {}, {"input_size": 24, "hidden_size": 32, "num_layers": 2, "bias": True,
                             "batch_first": False, "dropout": 0.0, "bidirectional": False}, "torch")


def _gru4rec(layers: int = 2) -> GRU4Rec:
    torch.manual_seed(0)
    return GRU4Rec(400, hidden_size=24, layers=layers, constrained_embedding=False, embedding=16).eval()


def _sessions(n_items: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, n_items, (48, 7), generator=g), torch.randint(1, 8, (48,), generator=g)


@pytest.mark.parametrize("bits,scheme,granularity,backend", [
    (8, "symmetric", "channel", "torch"), (4, "asymmetric", "channel", "torch"), (2, "symmetric", "tensor", "auto"),
    (4, "kmeans", "channel", "auto"), (16, "symmetric", "channel", "auto"), (8, "asymmetric", "channel", "eager")])
def test_gru4rec_artifact_bytes_equal_formula_and_reload_is_identical(tmp_path, bits, scheme, granularity, backend):
    model = _gru4rec()
    seq, lens = _sessions()
    with torch.no_grad():
        dense = model(seq, lens)
    stats = quantize_(model, QuantConfig(bits=bits, scheme=scheme, granularity=granularity, backend=backend,
                                         targets=ALL))
    assert isinstance(model.gru, QuantizedGRU) and isinstance(model.embedding, QuantizedEmbedding)
    assert isinstance(model.out, QuantizedLinear) and stats["quant_modules"] == 3
    shapes = [(72, 16), (72, 24), (72, 24), (72, 24)]
    per_row = granularity == "channel" and scheme != "kmeans"
    assert stats["quant_gru_bytes"] == sum(packed_nbytes(r, c, bits, scheme, per_row) for r, c in shapes)
    assert stats["quant_gru_bytes_fp32"] == 4 * sum(r * c for r, c in shapes)
    assert stats["quant_gru_ratio"] == stats["quant_gru_bytes_fp32"] / stats["quant_gru_bytes"]
    save_artifact(model, tmp_path / "q.pt", fmt="quantized")
    rec = torch.load(tmp_path / "q.pt", weights_only=True)["payload"]["tables"]["gru"]
    assert rec["kind"] == "gru" and sorted(rec["weights"]) == sorted(MATRICES)
    biases = sum(b.numel() * 4 for b in rec["biases"].values())
    assert biases == 4 * 4 * 72 and stored_nbytes(rec) - biases == expected_table_nbytes(rec) == stats["quant_gru_bytes"]
    reloaded = load_artifact(tmp_path / "q.pt")
    assert isinstance(reloaded.gru, QuantizedGRU) and reloaded.gru.backend == model.gru.backend
    with torch.inference_mode():
        out = model(seq, lens)
        assert torch.equal(out, reloaded(seq, lens))
        h = torch.randn(2, 3, 24)
        a, b = model.score_next(seq[:3, 0], h), reloaded.score_next(seq[:3, 0], h)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert (out - dense).abs().max() <= {16: 1e-3, 8: 0.05, 4: 0.3, 2: 1.0}[bits] * dense.abs().max()


def test_gru_bits_is_the_grus_own_width():
    qc = QuantConfig(bits=4, scheme="kmeans", linear_bits=8, gru_bits=8, gru_scheme="asymmetric", targets=ALL)
    assert qc.for_kind("gru").bits == 8 and qc.for_kind("gru").scheme == "asymmetric"
    assert qc.for_kind("embedding").bits == 4 and qc.for_kind("linear").scheme == "kmeans"
    assert qc.kernel_backend("gru") == "torch" and qc.kernel_backend("embedding") == "eager"
    assert qc.kernel_backend() == "mixed" and qc.min_bits == 4
    assert quant_summary(qc) == "emb int4-kmeans-channel + linear int8-kmeans-channel + gru int8-asymmetric-channel"
    assert QuantConfig(bits=32, gru_bits=4).min_bits == 4
    model = _gru4rec()
    stats = quantize_(model, qc)
    assert all(model.gru.q[n].bits == 8 and model.gru.q[n].zero_point is not None for n in MATRICES)
    assert model.embedding.q.bits == 4 and model.embedding.q.codebook is not None
    assert stats["quant_gru_bytes"] == sum(packed_nbytes(*model.gru.q[n].shape, 8, "asymmetric", True)
                                           for n in MATRICES)
    model = _gru4rec()
    quantize_(model, QuantConfig(bits=4, gru_bits=32, targets=ALL))       # gru_bits=32: the GRU stays fp32
    assert type(model.gru) is nn.GRU and isinstance(model.out, QuantizedLinear)


def test_gru_target_is_a_no_op_on_a_model_without_a_gru_and_off_by_default():
    torch.manual_seed(0)
    ncf = NeuMF(50, 40, factors=4, mlp_layers=[8, 4]).eval()
    assert quantize_(ncf, QuantConfig(bits=8, targets=("gru",)))["quant_modules"] == 0
    assert quantize_(ncf, QuantConfig(bits=8, targets=ALL))["quant_modules"] == 6
    model = _gru4rec()
    stats = quantize_(model, QuantConfig(bits=8))                          # default targets: embeddings, linear
    assert type(model.gru) is nn.GRU and "quant_gru_bytes" not in stats


def test_qat_fake_quantizes_the_gru_and_converts_to_the_same_forward():
    model = _gru4rec().train()
    qc = QuantConfig(bits=2, scheme="symmetric", activations="none", backend="eager", targets=ALL)
    assert attach_fake_quant(model, qc) == 3 and attach_fake_quant(model, qc) == 3    # idempotent
    latent = model.gru.parametrizations.weight_hh_l1.original
    before = latent.detach().clone()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    items, targets, neg = torch.randint(0, 400, (32,)), torch.randint(0, 400, (32,)), torch.randint(0, 400, (16,))
    h, _ = model.step(items, torch.randn(2, 32, 24) * 0.5)
    sampled_loss(model, h, targets, neg).backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, latent.detach())
    assert all(row.unique().numel() <= 4 for row in model.gru.weight_hh_l1)   # 2-bit grid per gate unit
    copy.deepcopy(model)                                   # the GRU's cached flat weights are leaves again
    model.eval()
    seq, lens = _sessions()
    with torch.no_grad():
        fq = model(seq, lens)
        quantize_(model, qc)
        assert is_converted(model) and isinstance(model.gru, QuantizedGRU)
        assert torch.equal(model(seq, lens), fq)


@pytest.mark.realdata
def test_ptq_gru4rec_pipeline_quantizes_the_gru(tmp_path, shared_data_dir):
    from recsys.pipeline import run

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            f"paths.root_dir={tmp_path}", f"paths.data_dir={shared_data_dir}", "model=gru4rec", "data=yoochoose",
            "model.hidden_size=16", "model.n_sample=64", "model.batch_size=64", "train.optimizer=adagrad",
            "train.lr=0.05", "train.epochs=1", "finetune.epochs=0", "quant=ptq", "quant.bits=8", "quant.gru_bits=4",
            "quant.targets=[embeddings,linear,gru]", "bench.requests=20", "bench.warmup=2",
            "bench.full_catalogue_requests=2", "bench.throughput_repeats=2", "bench.throughput_batch=64",
            "trainer.enable_progress_bar=false", "tracking.run_name=gru-ptq", "tracking.log_model=false"])
    run(cfg)   # the pipeline itself checks that the reloaded artifact scores identically (atol=0)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    r = [x for x in client.search_runs([exp.experiment_id]) if x.info.run_name == "gru-ptq"][-1]
    m, tags = r.data.metrics, r.data.tags
    assert tags["artifact_format"] == "quantized" and "gru int4-symmetric-channel" in tags["quant_scheme"]
    h = 16
    assert m["final/quant_gru_bytes"] == 2 * packed_nbytes(3 * h, h, 4, "symmetric", True)
    assert m["final/quant_gru_ratio"] > 5.0 and m["final/quant_linear_ratio"] > 3.0
    assert 0.0 <= m["final/recall_at_20"] <= 1.0 and abs(m["final/recall_at_20"] - m["dense/recall_at_20"]) < 0.1
    path = next(Path(r.info.artifact_uri.removeprefix("file://")).glob("artifacts/compressed.pt"))
    model = load_artifact(path)
    assert isinstance(model.gru, QuantizedGRU) and model.gru.backend == "torch"
    assert all(q.bits == 4 for q in model.gru.q.values())


def test_pruned_gru_weights_stay_zero_after_quantization():
    model = _gru4rec()
    torch.nn.utils.prune.l1_unstructured(model.gru, "weight_hh_l0", amount=0.5)
    zeros = model.gru.weight_hh_l0 == 0
    quantize_(model, QuantConfig(bits=4, scheme="asymmetric", targets=ALL))
    assert isinstance(model.gru, QuantizedGRU) and zeros.float().mean() >= 0.5
    assert (model.gru.weight_hh_l0[zeros] == 0).all()


@pytest.mark.parametrize("kw", [dict(bidirectional=True, batch_first=True), dict(bias=False, num_layers=2)])
def test_other_gru_layouts_keep_nn_grus_call(kw):
    torch.manual_seed(0)
    gru = nn.GRU(12, 16, **{"num_layers": 1, **kw}).eval()
    x = torch.randn(5, 4, 12)
    with torch.no_grad():
        ref, h_ref = gru(x)
        # torch's kernels: 8-bit activations (~1 % error), 7-bit where this CPU's kernels overflow without (~2-3 %)
        for backend, bound in (("eager", 0.01), ("torch", 0.04 if activations_overflow() else 0.02)):
            out, h = _quantized(gru, 8, "symmetric", backend)(x)
            assert out.shape == ref.shape and h.shape == h_ref.shape
            assert (out - ref).abs().max() <= bound * ref.abs().max()


def test_reduce_range_reaches_the_gru_kernel_and_survives_reload(tmp_path):
    model = _gru4rec(layers=1)
    quantize_(model, QuantConfig(bits=8, targets=("gru",), reduce_range=True))
    save_artifact(model, tmp_path / "q.pt", fmt="quantized")
    back = load_artifact(tmp_path / "q.pt")
    assert back.gru.reduce_range is True and back.gru.backend == "torch"
    seq, lens = _sessions()
    with torch.inference_mode():
        assert torch.equal(model(seq, lens), back(seq, lens))
