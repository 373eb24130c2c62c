"""Quantization unit tests on synthetic tensors and tiny models: error bounds, packing, artifact bytes, QAT gradients,
kernel consistency, bad configs."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from recsys.compress.quant import QuantConfig, attach_fake_quant, quantize_
from recsys.errors import ConfigError
from recsys.export.artifact import check_same_scores, load_artifact, save_artifact
from recsys.export.quantized import expected_table_nbytes, stored_nbytes
from recsys.models.ncf import NeuMF
from recsys.nn.qtensor import (
    dequantize,
    error_bound,
    fake_quantize,
    pack_bits,
    packed_nbytes,
    quantize_tensor,
    unpack_bits,
)
from recsys.nn.quantized import QuantizedEmbedding, QuantizedLinear, activations_overflow, kernel_reduce_range

CONF = str(Path(__file__).resolve().parents[1] / "conf")
UNIFORM = [(b, s, g) for b in (8, 4, 2) for s in ("symmetric", "asymmetric") for g in ("tensor", "channel")]


def _weights(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 33, generator=g) * torch.rand(64, 1, generator=g) * 0.1   # rows of different ranges
    w[3] = 0.0                                                                    # an all-zero (pruned) row
    w[5, ::2] = 0.0                                                               # scattered pruned weights
    return w + 0.02 * (torch.rand(64, 33, generator=g) > 0.5)                     # some rows not centred on 0


@pytest.mark.parametrize("bits,scheme,granularity", UNIFORM)
def test_quantize_dequantize_error_within_half_a_step(bits, scheme, granularity):
    w = _weights()
    q = quantize_tensor(w, bits, scheme, granularity)
    err = (w - dequantize(q)).abs()
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) < 2 ** bits
    assert (err <= error_bound(q) * (1 + 1e-6)).all()
    # the bound is not vacuous: the step is the covered range over the number of levels (+ fp16 round-up)
    lo, hi = (w.amin(1), w.amax(1)) if granularity == "channel" else (w.min().reshape(1), w.max().reshape(1))
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    step = 2 * torch.maximum(-lo, hi) / (2 ** bits - 1) if scheme == "symmetric" else (hi - lo) / (2 ** bits - 2)
    assert (2 * error_bound(q).reshape(-1) <= step * (1 + 2 ** -9) + 1e-4).all()


@pytest.mark.parametrize("bits,scheme,granularity", UNIFORM)
def test_exact_zeros_stay_zero(bits, scheme, granularity):
    w = _weights()
    w_hat = dequantize(quantize_tensor(w, bits, scheme, granularity))
    assert (w_hat[w == 0] == 0).all()


@pytest.mark.parametrize("dtype,eps", [("float16", 2 ** -10), ("bfloat16", 2 ** -7)])
def test_16_bit_relative_error(dtype, eps):
    w = _weights()
    q = quantize_tensor(w, 16, dtype=dtype)
    assert q.codes.dtype == {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    assert ((w - dequantize(q)).abs() <= w.abs() * eps / 2 + 2 ** -25).all()   # 2**-25: fp16 subnormal step / 2


@pytest.mark.parametrize("bits", [4, 2])
def test_kmeans_assigns_nearest_centroid_and_beats_uniform(bits):
    w = torch.randn(200, 16, generator=torch.Generator().manual_seed(1)) ** 3   # heavy-tailed: uniform wastes levels
    q = quantize_tensor(w, bits, "kmeans")
    assert q.codebook.numel() == 2 ** bits
    dist = (w.reshape(-1, 1) - q.codebook.reshape(1, -1)).abs()
    assert torch.allclose((w - dequantize(q)).abs().reshape(-1), dist.min(1).values)
    uni = dequantize(quantize_tensor(w, bits, "asymmetric", "tensor"))
    assert ((w - dequantize(q)) ** 2).mean() < ((w - uni) ** 2).mean()


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("cols", [1, 7, 32])
def test_packing_round_trip_exact(bits, cols):
    codes = torch.randint(0, 2 ** bits, (9, cols), dtype=torch.uint8, generator=torch.Generator().manual_seed(bits))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (9, math.ceil(cols * bits / 8))
    assert torch.equal(unpack_bits(packed, bits, cols), codes)


def test_packing_order_low_bits_first():
    assert pack_bits(torch.tensor([[1, 2]], dtype=torch.uint8), 4).item() == 0x21
    assert pack_bits(torch.tensor([[1, 2, 3, 0]], dtype=torch.uint8), 2).item() == 0b00111001


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_torch_kernels_serve_the_stored_codes(bits):
    w = _weights()
    q = quantize_tensor(w, bits, "asymmetric", "channel")
    emb = QuantizedEmbedding(q, "torch")
    idx = torch.tensor([[0, 5], [63, 3]])
    # fbgemm stores bias = -zero_point * scale in fp16 for 4/2 bits: one fp16 rounding of <= 15 steps at most
    assert torch.allclose(emb(idx), dequantize(q)[idx], rtol=0, atol=0.01 * float(q.scale.float().max()) + 1e-7)
    assert torch.equal(emb(idx), emb.weight[idx])   # score_all's .weight is the kernel's own view
    lin = QuantizedLinear(q, torch.zeros(64), "torch", "dynamic")
    x = torch.randn(5, 33)
    ref = x @ dequantize(q).T
    assert (lin(x) - ref).abs().max() <= 0.02 * ref.abs().max()   # int8 dynamic activations: ~1 % of the output


def _model(n_users: int = 300, n_items: int = 200) -> NeuMF:
    torch.manual_seed(0)
    return NeuMF(n_users, n_items, factors=16, mlp_layers=[32, 16]).eval()


@pytest.mark.parametrize("bits,scheme,backend", [(8, "symmetric", "auto"), (4, "asymmetric", "auto"),
                                                 (2, "symmetric", "eager"), (4, "kmeans", "auto"),
                                                 (16, "symmetric", "auto")])
def test_artifact_bytes_equal_formula_and_reload_is_identical(tmp_path, bits, scheme, backend):
    model = _model(3000, 1000)
    dense_bytes = save_artifact(model, tmp_path / "dense.pt")
    qc = QuantConfig(bits=bits, scheme=scheme, backend=backend, activations="dynamic")
    stats = quantize_(model, qc)
    assert stats["quant_modules"] == 6   # 4 embedding tables + 1 tower Linear + predict
    nbytes = save_artifact(model, tmp_path / "q.pt", fmt="quantized")
    blob = torch.load(tmp_path / "q.pt", weights_only=True)
    tables = blob["payload"]["tables"]
    for rec in tables.values():
        assert stored_nbytes(rec) - (rec["bias"].numel() * 4 if rec.get("bias") is not None else 0) \
            - (8 if "act_qparams" in rec else 0) == expected_table_nbytes(rec)
    payload = sum(stored_nbytes(r) for r in tables.values()) + sum(
        v.numel() * v.element_size() for v in blob["payload"]["dense"].values())
    assert payload <= nbytes <= payload + 24_000   # torch.save container overhead (zip records, pickled spec)
    emb = [packed_nbytes(n, d, bits, scheme, scheme != "kmeans") for n, d in ((3000, 16), (1000, 16))] * 2
    assert stats["quant_embedding_bytes"] == sum(emb)
    if bits <= 8:
        assert dense_bytes / nbytes > {8: 3.3, 4: 5.0, 2: 8.0}[bits]   # 16-wide rows: scales cost 1/8 of an int8 row
    reloaded = load_artifact(tmp_path / "q.pt")
    users, items = torch.randint(0, 3000, (512,)), torch.randint(0, 1000, (512,))
    check_same_scores(model, reloaded, users, items, atol=0.0)
    assert torch.equal(model.score_all(users[:3]), reloaded.score_all(users[:3]))


def test_mixed_widths_per_kind_bytes_and_reload(tmp_path):
    """bits=4 k-means embeddings with 8-bit asymmetric Linear layers: each kind gets its own width, scheme and kernel,
    the byte count follows the per-kind formula and the reloaded artifact scores identically."""
    model = _model(3000, 1000)
    qc = QuantConfig(bits=4, scheme="kmeans", linear_bits=8, linear_scheme="asymmetric", activations="dynamic")
    assert qc.kernel_backend("embedding") == "eager" and qc.kernel_backend("linear") == "torch"
    assert qc.kernel_backend() == "mixed"
    stats = quantize_(model, qc)
    embs = [m for m in model.modules() if isinstance(m, QuantizedEmbedding)]
    lins = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert len(embs) == 4 and all(m.q.bits == 4 and m.q.codebook is not None for m in embs)
    assert len(lins) == 2 and all(m.q.bits == 8 and m.q.zero_point is not None and m.backend == "torch" for m in lins)
    emb = [packed_nbytes(n, d, 4, "kmeans", False) for n, d in ((3000, 16), (1000, 16))] * 2
    assert stats["quant_embedding_bytes"] == sum(emb)
    assert stats["quant_linear_bytes"] == sum(packed_nbytes(*m.q.shape, 8, "asymmetric", True) for m in lins)
    save_artifact(model, tmp_path / "q.pt", fmt="quantized")
    reloaded = load_artifact(tmp_path / "q.pt")
    users, items = torch.randint(0, 3000, (256,)), torch.randint(0, 1000, (256,))
    check_same_scores(model, reloaded, users, items, atol=0.0)


def test_linear_bits_32_leaves_linear_layers_in_fp32():
    model = _model(300, 100)
    quantize_(model, QuantConfig(bits=4, linear_bits=32))
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())
    assert sum(isinstance(m, QuantizedEmbedding) for m in model.modules()) == 4


@pytest.mark.parametrize("reduce_range", [False, True])
def test_reduce_range_is_the_kernel_flag_and_survives_reload(tmp_path, reduce_range):
    """The dynamic int8 Linear quantizes activations with 8 bits unless reduce_range asks for 7 (PyTorch's x86
    default); the flag is stored, and the 8-bit path is the more accurate one on activations with a wide range."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(4096, 64) * 3
    q = quantize_tensor(lin.weight.detach(), 8, "symmetric", "channel")
    mod = QuantizedLinear(q, lin.bias, "torch", "dynamic", reduce_range=reduce_range)
    ref = torch.nn.functional.linear(x, dequantize(q), lin.bias)
    err = (mod(x) - ref).abs().mean()
    other = QuantizedLinear(q, lin.bias, "torch", "dynamic", reduce_range=not reduce_range)
    err_other = (other(x) - ref).abs().mean()
    if activations_overflow():   # this CPU's kernels saturate with 8-bit activations: both run 7-bit ones
        assert err == err_other
    else:
        assert (err < err_other) == (not reduce_range)
    model = _model(300, 100)
    quantize_(model, QuantConfig(bits=8, reduce_range=reduce_range))
    save_artifact(model, tmp_path / "q.pt", fmt="quantized")
    back = load_artifact(tmp_path / "q.pt")
    lins = [m for m in back.modules() if isinstance(m, QuantizedLinear)]
    assert lins and all(m.reduce_range is reduce_range for m in lins)
    users, items = torch.randint(0, 300, (256,)), torch.randint(0, 100, (256,))
    check_same_scores(model, back, users, items, atol=0.0)


def test_overflow_probe_follows_the_engine_and_forces_7_bit_activations_only_where_8_bit_ones_overflow():
    """The probe's answer is the kernel's own behaviour: on an engine that does not saturate (qnnpack) 8-bit
    activations stay; where the current engine saturates (AVX2 without VNNI), reduce_range is forced on."""
    before = torch.backends.quantized.engine
    try:
        if "qnnpack" in torch.backends.quantized.supported_engines:
            torch.backends.quantized.engine = "qnnpack"
            assert activations_overflow() is False and kernel_reduce_range(False) is False
    finally:
        torch.backends.quantized.engine = before
    assert kernel_reduce_range(True) is True
    assert kernel_reduce_range(False) is activations_overflow()
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 8)
    q = quantize_tensor(lin.weight.detach(), 8, "symmetric", "channel")
    x = torch.rand(16, 64) * 4   # non-negative activations: the u8 codes reach 255, where saturation bites
    ref = torch.nn.functional.linear(x, dequantize(q), lin.bias)
    out = QuantizedLinear(q, lin.bias, "torch", "dynamic", reduce_range=False)(x)
    assert (out - ref).abs().max() <= 0.02 * ref.abs().max()


def test_quantize_pruned_model_keeps_zeros_and_removes_reparametrisation():
    model = _model()
    torch.nn.utils.prune.l1_unstructured(model.mlp.tower[1], "weight", amount=0.6)
    torch.nn.utils.prune.l1_unstructured(model.gmf.user_embedding, "weight", amount=0.6)
    zeros = model.mlp.tower[1].weight == 0
    quantize_(model, QuantConfig(bits=4, scheme="asymmetric", backend="eager", activations="none"))
    w = model.mlp.tower[1].weight
    assert isinstance(model.mlp.tower[1], QuantizedLinear) and (w[zeros] == 0).all()
    assert (model.gmf.user_embedding.weight == 0).float().mean() >= 0.6


def test_qat_gradients_flow_and_a_step_changes_the_weights():
    model = _model().train()
    qc = QuantConfig(bits=2, scheme="symmetric", activations="static")
    assert attach_fake_quant(model, qc) == 6 and attach_fake_quant(model, qc) == 6   # idempotent
    latent = model.mlp.tower[1].parametrizations.weight.original
    before = latent.detach().clone()
    emb_before = model.gmf.item_embedding.parametrizations.weight.original.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    users, items = torch.randint(0, 300, (256,)), torch.randint(0, 200, (256,))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(users, items), torch.rand(256).round())
    loss.backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, latent.detach())
    assert not torch.equal(emb_before, model.gmf.item_embedding.parametrizations.weight.original.detach())
    # forward weights are on the 2-bit grid: at most 4 distinct values per row
    assert model.mlp.tower[1].weight.unique(dim=None).numel() <= 4 * 16
    # conversion reproduces the fake-quantized forward exactly (same function), activations from the QAT observer
    model.eval()
    with torch.no_grad():
        fq = model(users, items)
        quantize_(model, QuantConfig(bits=2, scheme="symmetric", activations="static", backend="eager"))
        assert torch.allclose(model(users, items), fq, atol=1e-6)


def test_fake_quantize_is_straight_through():
    w = torch.randn(4, 8, requires_grad=True)
    fake_quantize(w, 4).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


@pytest.mark.parametrize("overrides,needle", [
    (["quant=ptq", "quant.bits=3"], "quant.bits=3"),
    (["quant=ptq", "quant.scheme=log"], "quant.scheme='log'"),
    (["quant=ptq", "quant.targets=[gru]"], "quant.targets"),
    (["quant=qat", "finetune.epochs=0"], "finetune.epochs=0"),
    (["quant=qat", "quant.bits=16"], "quant.method=qat"),
    (["quant=ptq", "quant.backend=torch", "quant.scheme=kmeans"], "kmeans"),
    (["quant=ptq", "quant.backend=torch", "quant.bits=16"], "quant.bits=16"),
    (["quant=ptq", "quant.backend=torch", "quant.activations=static"], "quant.activations='static'"),
    (["quant=ptq", "quant.activations=static", "quant.calibration_batches=0"], "quant.calibration_batches=0"),
    (["quant=ptq", "quant.linear_bits=3"], "quant.linear_bits=3"),
    (["quant=ptq", "quant.linear_scheme=nf4"], "quant.linear_scheme='nf4'"),
    (["quant=ptq", "quant.backend=torch", "quant.linear_bits=16"], "quant.linear_bits=16"),
    (["quant=qat", "finetune.epochs=1", "quant.linear_scheme=kmeans"], "quant.linear_scheme='kmeans'"),
    # GRU4Rec's nn.GRU target
    (["quant=ptq", "quant.targets=[gru]"], "model=neumf has no GRU"),
    (["quant=ptq", "quant.targets=[lstm]"], "quant.targets"),
    (["quant=ptq", "quant.gru_bits=3"], "quant.gru_bits=3"),
    (["quant=ptq", "quant.gru_scheme=nf4"], "quant.gru_scheme='nf4'"),
    (["quant=ptq", "quant.backend=torch", "quant.gru_bits=16"], "quant.gru_bits=16"),
    (["quant=ptq", "quant.backend=torch", "quant.gru_scheme=kmeans"], "quant.gru_scheme='kmeans'"),
    (["model=gru4rec", "data=yoochoose", "quant=ptq", "quant.targets=[gru]", "quant.backend=torch",
      "quant.activations=none"], "dynamic int8 GRU"),
    (["model=gru4rec", "data=yoochoose", "quant=ptq", "quant.activations=static"], "a session model"),
    (["quant=qat", "finetune.epochs=1", "quant.gru_bits=16"], "quant.gru_bits=16 with quant.method=qat"),
    (["quant=qat", "finetune.epochs=1", "quant.gru_scheme=kmeans"], "quant.gru_scheme='kmeans'"),
])
def test_bad_quant_config_fails_before_training(tmp_path, overrides, needle):
    from recsys.pipeline import run

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.root_dir={tmp_path}", f"paths.data_dir={tmp_path}", *overrides])
    with pytest.raises(ConfigError) as e:
        run(cfg)
    assert needle in str(e.value)
    assert not (tmp_path / "mlruns").exists()
