"""Runtime modules for quantized weights, and the ONE module that calls PyTorch's deprecated quantized ops
(``torch.ops.quantized`` / ``torch.ao.quantization``, deprecated in torch 2.13 but working) and torchao — so removing
or swapping a kernel library is a change here only.

``QuantizedEmbedding`` / ``QuantizedLinear`` keep the attribute surface the models use (``.weight``, ``.bias``,
``embedding_dim`` ...) so ``score_all`` keeps working, and run on one of two backends:

- ``eager``: float math on the dequantized weights (any scheme: 16-bit, k-means, static activation fake quant);
- ``torch``: real integer kernels — fbgemm/x86 rowwise embedding-bag lookups on the packed 8/4/2-bit rows, the
  dynamic int8 Linear and the dynamic int8 GRU (``torch.quantized_gru``; activations quantized per call). Sub-8-bit
  Linear/GRU codes run on the int8 kernels (their values fit), so 4/2-bit changes bytes, not Linear/GRU speed.

``QuantizedGRU`` keeps ``nn.GRU``'s call (``gru(x, hidden) -> (out, hidden)``) and attribute names (``weight_ih_l0``
... as dequantized views); its ``eager`` backend is weight-only (fp32 activations through ``torch.gru``).

The in-memory model and the one rebuilt from the artifact construct these modules from the same codes, so their scores
are bit-identical.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from recsys.nn.qtensor import QTensor, activation_qparams, dequantize, fake_quantize_activation, pack_bits

_DEPRECATION = ".*(deprecated|quantize_per|_make_per).*"


def _quiet() -> warnings.catch_warnings:
    """Silence the deprecation warnings of quantized-tensor creation (we know; this module is the one place)."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", message=_DEPRECATION)
    return ctx


# --------------------------------------------------------------------------------------- torch.ops.quantized kernels
_OVERFLOWS: dict[str, bool] = {}


def activations_overflow() -> bool:
    """Whether this CPU's int8 dynamic kernels (the current ``torch.backends.quantized.engine``) overflow with 8-bit
    activations: fbgemm / x86 on AVX2 CPUs without VNNI sum pairs of u8 x s8 products in int16 (``vpmaddubsw``), which
    saturates at 255 x 127 x 2; PyTorch's own ``quantize_dynamic`` therefore uses 7-bit activations (reduce_range)
    on x86. Found by running the kernel once per engine on an input that overflows there (all-ones activations and
    weights: 64 exactly, 32.4 where it saturates) rather than from CPU flags, so an engine that does not saturate
    (VNNI, qnnpack) keeps 8-bit activations. Measured on an AMD EPYC (AVX2, no VNNI): 8-bit dynamic Linear errors
    of 27-45 % at 8-bit weights and 18-370x the output at 4 / 2 bits without reduce_range, ~1 % with it."""
    engine = torch.backends.quantized.engine
    if engine not in _OVERFLOWS:
        ctx = _quiet()
        try:
            qw = torch.quantize_per_tensor(torch.ones(4, 64), 1 / 127, 0, torch.qint8)
            out = torch.ops.quantized.linear_dynamic(torch.ones(2, 64), torch.ops.quantized.linear_prepack(qw, None),
                                                     False)
        finally:
            ctx.__exit__(None, None, None)
        _OVERFLOWS[engine] = bool((out - 64.0).abs().max() > 0.5)
        if _OVERFLOWS[engine]:
            warnings.warn(f"torch's int8 dynamic kernels (engine {engine!r}) overflow with 8-bit activations on this "
                          "CPU (no VNNI): they run with 7-bit activations (reduce_range) here, whatever "
                          "quant.reduce_range says", RuntimeWarning, stacklevel=2)
    return _OVERFLOWS[engine]


def kernel_reduce_range(reduce_range: bool) -> bool:
    """The reduce_range the int8 dynamic kernels get: the configured one, or True where 8-bit activations overflow
    (:func:`activations_overflow`), since those results would be wrong, not merely less accurate."""
    return bool(reduce_range) or activations_overflow()


def embedding_prepack(q: QTensor) -> torch.Tensor:
    """fbgemm's rowwise layout from our codes: [codes | scale | bias] per row, bias = -zero_point * scale.

    Built by hand rather than with ``embedding_bag_*_prepack`` because those re-derive min/max scales from floats; we
    must serve exactly the codes and scales that the artifact stores."""
    rows = q.shape[0]
    scale = q.scale.float().expand(rows) if not q.per_channel else q.scale.float()
    bias = -q.zero().reshape(-1).expand(rows) * scale
    if q.bits == 8:
        tail = torch.stack([scale, bias], 1).contiguous().view(torch.uint8)            # 2 x fp32
        return torch.cat([q.codes, tail], 1).contiguous()
    tail = torch.stack([scale.half(), bias.half()], 1).contiguous().view(torch.uint8)  # 2 x fp16
    return torch.cat([pack_bits(q.codes, q.bits), tail], 1).contiguous()


def embedding_lookup(packed: torch.Tensor, bits: int, idx: torch.Tensor, dim: int) -> torch.Tensor:
    """Rows ``idx`` (any shape) of a prepacked table, dequantized by fbgemm's rowwise embedding-bag kernel."""
    flat = idx.reshape(-1).contiguous()   # a column of a (sessions, time) batch is a strided view
    offsets = torch.arange(flat.numel(), dtype=flat.dtype)
    op = {8: torch.ops.quantized.embedding_bag_byte_rowwise_offsets,
          4: torch.ops.quantized.embedding_bag_4bit_rowwise_offsets,
          2: torch.ops.quantized.embedding_bag_2bit_rowwise_offsets}[bits]
    out = op(packed, flat, offsets, False, 0, False, None, None, False)
    return out[:, :dim].reshape(*idx.shape, dim)   # packed rows are padded to whole bytes


def linear_prepack(q: QTensor, bias: torch.Tensor | None) -> object:
    """Packed int8 weight for the dynamic quantized Linear (per-channel or per-tensor affine qint8)."""
    ints = (q.codes.to(torch.int16) - 128).to(torch.int8)
    zp = (q.zero().reshape(-1) - 128).long()
    ctx = _quiet()
    try:
        if q.per_channel:
            qw = torch._make_per_channel_quantized_tensor(ints, q.scale.double(), zp, 0)
        else:
            qw = torch._make_per_tensor_quantized_tensor(ints, float(q.scale.float()), int(zp))
        return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.float())
    finally:
        ctx.__exit__(None, None, None)


def gru_cell_prepack(w_ih: QTensor, w_hh: QTensor, b_ih: torch.Tensor, b_hh: torch.Tensor,
                     reduce_range: bool = False) -> object:
    """One layer (one direction) of the dynamic int8 GRU from our codes/scales: the two packed int8 matrices with
    their biases, as ``torch.ao.nn.quantized.dynamic.GRU`` builds them (but without re-deriving the scales)."""
    ctx = _quiet()
    try:
        return torch.ops.quantized.make_quantized_cell_params_dynamic(
            linear_prepack(w_ih, b_ih), linear_prepack(w_hh, b_hh), b_ih, b_hh, kernel_reduce_range(reduce_range))
    finally:
        ctx.__exit__(None, None, None)


def gru_dynamic(x: torch.Tensor, hx: torch.Tensor, cells: list[object], num_layers: int, dropout: float,
                training: bool, bidirectional: bool, batch_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's dynamic int8 GRU (int8 weights, activations quantized per matmul call): (output, h_n)."""
    out, h = torch.quantized_gru(x, hx, cells, True, num_layers, dropout, training, bidirectional, batch_first)
    return out, h


def linear_dynamic(x: torch.Tensor, packed: object, reduce_range: bool = False) -> torch.Tensor:
    """int8 x int8 matmul with per-call activation quantization. ``reduce_range`` (7-bit activations) is what PyTorch's
    ``quantize_dynamic`` does on x86 to rule out int16 overflow in pre-VNNI AVX2 kernels; it costs accuracy (NeuMF
    ml-1m-loo HR@10: -0.94 pt with it, -0.08 pt without), so it is off unless ``quant.reduce_range=true`` or the CPU's
    kernels overflow without it (:func:`kernel_reduce_range`)."""
    return torch.ops.quantized.linear_dynamic(x.contiguous(), packed, kernel_reduce_range(reduce_range))


def torchao_int8_dynamic_(model: nn.Module) -> nn.Module:
    """torchao's int8 dynamic-activation / int8-weight Linear (the successor of torch.ao dynamic quant), in place."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def torch_ao_dynamic_int8(model: nn.Module) -> nn.Module:
    """PyTorch's own ``quantize_dynamic`` (torch.ao.quantization, deprecated) on every Linear — a reference runtime."""
    ctx = _quiet()
    try:
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    finally:
        ctx.__exit__(None, None, None)


# ----------------------------------------------------------------------------------------------------------- modules
class QuantizedEmbedding(nn.Embedding):
    """An embedding table held as a :class:`QTensor`; ``weight`` is its (kernel-)dequantized float view.

    Subclasses ``nn.Embedding`` (without its Parameter) so model code that looks for embeddings still finds it."""

    def __init__(self, q: QTensor, backend: str = "eager") -> None:
        nn.Module.__init__(self)
        self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse = None, None, 2.0, False, \
            False
        if backend == "torch" and (q.bits not in (8, 4, 2) or q.codebook is not None):
            raise ValueError(f"backend 'torch' has no kernel for {q.bits}-bit {q.scheme} embeddings")
        self.q, self.backend = q, backend
        self.num_embeddings, self.embedding_dim = q.shape
        self._packed = embedding_prepack(q) if backend == "torch" else None
        w = embedding_lookup(self._packed, q.bits, torch.arange(q.shape[0]), q.shape[1]) if self._packed is not None \
            else dequantize(q)
        self.register_buffer("weight", w, persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if self._packed is not None:
            return embedding_lookup(self._packed, self.q.bits, idx, self.embedding_dim)
        return F.embedding(idx, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.q.bits}, {self.q.scheme}, {self.backend}"


class QuantizedLinear(nn.Linear):
    """A Linear layer with quantized weights, optional activation quantization (``none`` / ``dynamic`` / ``static``
    with calibrated ``act_scale``/``act_zero_point``). Subclasses ``nn.Linear`` (weight and bias are buffers) so model
    code that walks its Linear layers (e.g. ``MLP.tower_scores``) uses the dequantized weights."""

    def __init__(self, q: QTensor, bias: torch.Tensor | None, backend: str = "eager", activations: str = "none",
                 act_qparams: tuple[torch.Tensor, torch.Tensor] | None = None, act_bits: int = 8,
                 reduce_range: bool = False) -> None:
        nn.Module.__init__(self)
        if backend == "torch" and (q.bits not in (8, 4, 2) or q.codebook is not None or activations != "dynamic"):
            raise ValueError(f"backend 'torch' runs only uniform <=8-bit weights with dynamic activations "
                             f"(got {q.bits}-bit {q.scheme}, activations={activations})")
        if q.bits == 16:
            activations = "none"   # mixed precision: weights in 16 bits, activations in fp32
        if activations == "static" and act_qparams is None:
            raise ValueError("activations='static' needs calibrated (scale, zero_point)")
        self.q, self.backend, self.activations, self.act_bits = q, backend, activations, act_bits
        self.reduce_range = reduce_range
        self.out_features, self.in_features = q.shape
        self.register_buffer("weight", dequantize(q), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone(), persistent=False)
        s, z = act_qparams if act_qparams is not None else (torch.tensor(1.0), torch.tensor(0.0))
        self.register_buffer("act_scale", s.float().reshape(()), persistent=False)
        self.register_buffer("act_zero_point", z.float().reshape(()), persistent=False)
        self._packed = linear_prepack(q, self.bias) if backend == "torch" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is not None:
            return linear_dynamic(x, self._packed, self.reduce_range)
        if self.activations == "static":
            x = fake_quantize_activation(x, self.act_scale, self.act_zero_point, self.act_bits)
        elif self.activations == "dynamic":
            s, z = activation_qparams(float(x.min()), float(x.max()), self.act_bits)
            x = fake_quantize_activation(x, s, z, self.act_bits)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, bits={self.q.bits}, {self.q.scheme}, {self.backend}, "
                f"activations={self.activations}")


def gru_weight_names(num_layers: int, bidirectional: bool = False) -> list[tuple[str, str, str, str]]:
    """(weight_ih, weight_hh, bias_ih, bias_hh) names of every layer and direction, in ``nn.GRU``'s flat order."""
    sfx = ("", "_reverse") if bidirectional else ("",)
    return [tuple(f"{p}_l{k}{s}" for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            for k in range(num_layers) for s in sfx]


def gru_args(gru: nn.GRU) -> dict[str, object]:
    """The constructor arguments of an ``nn.GRU`` (or a :class:`QuantizedGRU`) that shape its computation."""
    return {k: getattr(gru, k) for k in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                                         "bidirectional")}


class QuantizedGRU(nn.Module):
    """An ``nn.GRU`` whose weight matrices (``weight_ih_l{k}``, ``weight_hh_l{k}``) are :class:`QTensor` s — per row
    = one scale per gate unit — and whose biases stay fp32.

    ``eager``: ``torch.gru`` on the dequantized weights (any width / scheme; activations fp32). ``torch``: PyTorch's
    dynamic int8 GRU kernel on exactly our codes and scales (uniform 8/4/2-bit; per-call int8 activations). Same call
    and outputs as ``nn.GRU``: ``gru(x, hx) -> (output, h_n)``; not a subclass (``RNNBase`` re-packs flat weights)."""

    def __init__(self, weights: dict[str, QTensor], biases: dict[str, torch.Tensor | None], args: dict[str, object],
                 backend: str = "eager", reduce_range: bool = False) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = int(args["input_size"]), int(args["hidden_size"]), \
            int(args["num_layers"])
        self.bias, self.batch_first, self.bidirectional = bool(args["bias"]), bool(args["batch_first"]), \
            bool(args["bidirectional"])
        self.dropout = float(args["dropout"])
        names = gru_weight_names(self.num_layers, self.bidirectional)
        missing = [n for group in names for n in group[:2] if n not in weights]
        if missing:
            raise ValueError(f"QuantizedGRU: no quantized weights for {missing}")
        if backend == "torch" and any(q.bits not in (8, 4, 2) or q.codebook is not None for q in weights.values()):
            raise ValueError("backend 'torch' runs only uniform <=8-bit GRU weights (got "
                             f"{sorted({(q.bits, q.scheme) for q in weights.values()})})")
        self.q, self.backend, self.reduce_range = dict(weights), backend, bool(reduce_range)
        self.activations = "dynamic" if backend == "torch" else "none"
        for n, q in self.q.items():
            self.register_buffer(n, dequantize(q), persistent=False)
        for group in names:
            for n in group[2:]:
                b = biases.get(n) if self.bias else None
                self.register_buffer(n, None if b is None else b.detach().float().clone(), persistent=False)
        self._names = names
        self._cells = None
        if backend == "torch":
            zeros = torch.zeros(3 * self.hidden_size)
            self._cells = [gru_cell_prepack(self.q[wi], self.q[wh], zeros if getattr(self, bi) is None else
                                            getattr(self, bi), zeros if getattr(self, bh) is None else getattr(self, bh),
                                            self.reduce_range) for wi, wh, bi, bh in names]

    def flat_weights(self) -> list[torch.Tensor]:
        """The (dequantized) weights and biases in ``nn.GRU``'s flat order, as ``torch.gru`` takes them."""
        return [getattr(self, n) for group in self._names for n in (group if self.bias else group[:2])]

    def forward(self, x: torch.Tensor, hx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(x, nn.utils.rnn.PackedSequence):
            raise NotImplementedError("QuantizedGRU takes padded tensors, not PackedSequence")
        unbatched = x.dim() == 2
        if unbatched:
            x, hx = x.unsqueeze(1), (None if hx is None else hx.unsqueeze(1))
        if hx is None:
            batch = x.shape[0] if self.batch_first else x.shape[1]
            hx = torch.zeros(self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size,
                             dtype=x.dtype, device=x.device)
        if self._cells is not None:
            out, h = gru_dynamic(x, hx, self._cells, self.num_layers, self.dropout, self.training, self.bidirectional,
                                 self.batch_first)
        else:
            out, h = torch.gru(x, hx, self.flat_weights(), self.bias, self.num_layers, self.dropout, self.training,
                               self.bidirectional, self.batch_first)
        return (out.squeeze(1), h.squeeze(1)) if unbatched else (out, h)

    def extra_repr(self) -> str:
        q = next(iter(self.q.values()))
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bits={q.bits}, {q.scheme}, "
                f"{self.backend}")
