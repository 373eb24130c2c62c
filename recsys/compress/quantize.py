"""Quantization from 16 down to 2 bits: pure tensor functions, model-level ``quantize_`` / fake-quant, and the
``quant.method=ptq`` / ``qat`` techniques.

Every uniform scheme stores *unsigned* codes ``u`` in ``[0, 2**bits - 1]`` with an integer zero point ``z`` and a scale
``s`` (fp16, one per row / output channel or one per tensor), so ``w_hat = (u - z) * s``. Symmetric means ``z`` is the
fixed mid code ``2**(bits-1)`` (so it need not be stored); asymmetric means ``z`` is chosen per row. Zero is always
inside the range, so pruned (exactly zero) weights stay exactly zero. ``kmeans`` is the non-uniform option: one
codebook of ``2**bits`` centroids per table, codes are indices. 16 bits means fp16/bf16 storage (mixed precision).

Hand-written because PyTorch's observers/fake-quant modules only cover 8-bit (q)int8 dtypes and torchao's QAT targets
group-wise LLM Linear layers: recommenders need 2/4-bit per-row embedding tables whose training-time fake quant is
*exactly* the function used for the packed artifact.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

BITS = (32, 16, 8, 4, 2)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
SCHEMES = ("symmetric", "asymmetric", "kmeans")
GRANULARITIES = ("tensor", "channel", "row")   # "row" (embedding tables) is the same axis as "channel" (Linear out)
TARGETS = ("embeddings", "linear", "gru")      # gru: the weight matrices of an nn.GRU (GRU4Rec)
DEFAULT_TARGETS = ("embeddings", "linear")
KINDS = {"embeddings": "embedding", "linear": "linear", "gru": "gru"}   # target name -> module kind
GRU_MODELS = ("gru4rec",)                      # model names (``model.name``) that have an nn.GRU
WIDTH_KEYS = ("bits", "linear_bits", "gru_bits")            # the quant keys that set a width (per kind)
SCHEME_KEYS = ("scheme", "linear_scheme", "gru_scheme")     # ... and a scheme
ACTIVATIONS = ("none", "dynamic", "static")
BACKENDS = ("auto", "eager", "torch")
SCALE_DTYPE = torch.float16
_FP16_TINY = float(torch.finfo(torch.float16).tiny)


@dataclass
class QTensor:
    """A quantized 2-D tensor: unsigned codes (unpacked, uint8) + fp16 scale / uint8 zero point, or a codebook, or a
    16-bit float copy (``bits == 16``)."""

    bits: int
    scheme: str
    shape: tuple[int, ...]
    codes: torch.Tensor                      # uint8 codes (bits <= 8) or the fp16/bf16 tensor (bits == 16)
    scale: torch.Tensor | None = None        # (rows,) or (1,), fp16
    zero_point: torch.Tensor | None = None   # (rows,) or (1,), uint8; None = symmetric (implicit mid code)
    codebook: torch.Tensor | None = None     # (2**bits,) float32 for kmeans

    @property
    def per_channel(self) -> bool:
        return self.scale is not None and self.scale.numel() > 1

    def zero(self) -> torch.Tensor:
        """Zero point as a float column (rows, 1) or scalar."""
        if self.zero_point is None:
            z = torch.full((self.scale.numel(),), float(2 ** (self.bits - 1)))
        else:
            z = self.zero_point.float()
        return z[:, None] if self.per_channel else z.reshape(())


def qrange(bits: int) -> tuple[int, int]:
    """Unsigned code range of a ``bits``-bit uniform quantizer."""
    return 0, 2 ** bits - 1


def _reduce_dims(w: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if per_channel:
        flat = w.reshape(w.shape[0], -1)
        return flat.amin(1), flat.amax(1)
    return w.amin().reshape(1), w.amax().reshape(1)


def choose_qparams(w: torch.Tensor, bits: int, symmetric: bool, per_channel: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (fp16, rounded *before* codes are computed so the bound holds for the stored value) and zero point."""
    lo, hi = _reduce_dims(w.detach().float(), per_channel)
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)   # keep 0 representable (pruned weights stay 0)
    qmin, qmax = qrange(bits)
    if symmetric:
        scale = torch.maximum(-lo, hi) / ((qmax - qmin) / 2.0)
        return _round_up_fp16(scale), None
    scale = (hi - lo).clamp(min=_FP16_TINY) / float(qmax - qmin)
    # With an integer zero point, widen the step until [lo, hi] fits inside the code range, so every value is within
    # half a step (not one step) of its reconstruction; of floor/ceil of the ideal zero point keep the smaller step.
    best_s, best_z = None, None
    for zp in (torch.floor(-lo / scale).clamp(qmin, qmax), torch.ceil(-lo / scale).clamp(qmin, qmax)):
        up = torch.where(zp < qmax, hi / (qmax - zp).clamp(min=1), torch.where(hi > 0, torch.inf, scale))
        down = torch.where(zp > qmin, -lo / (zp - qmin).clamp(min=1), torch.where(lo < 0, torch.inf, scale))
        s = torch.maximum(scale, torch.maximum(up, down))
        best_z = zp if best_s is None else torch.where(s < best_s, zp, best_z)
        best_s = s if best_s is None else torch.minimum(s, best_s)
    return _round_up_fp16(best_s), best_z.to(torch.uint8)


def _round_up_fp16(scale: torch.Tensor) -> torch.Tensor:
    """fp16 storage of a step, never smaller than the float step (a smaller one would clip the range's ends)."""
    scale = scale.clamp(min=_FP16_TINY)
    return (scale * (1 + 2.0 ** -10)).to(SCALE_DTYPE).clamp(min=_FP16_TINY)


def kmeans_codebook(w: torch.Tensor, bits: int, iters: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D Lloyd k-means over all values of ``w``: (codebook (2**bits,), codes uint8 shaped like ``w``)."""
    x = w.detach().float().reshape(-1)
    k = 2 ** bits
    centroids = torch.quantile(x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[:200_000]],
                               torch.linspace(0, 1, k + 2)[1:-1])
    for _ in range(iters):
        codes = _nearest(x, centroids)
        sums = torch.zeros(k).index_add_(0, codes, x)
        counts = torch.bincount(codes, minlength=k).float()
        moved = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.equal(moved, centroids):
            break
        centroids = moved
    centroids, _ = torch.sort(centroids)
    return centroids, _nearest(x, centroids).to(torch.uint8).reshape(w.shape)


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid of every value (centroids sorted, so bucketize on the midpoints)."""
    c, order = torch.sort(centroids)
    idx = torch.bucketize(x, (c[1:] + c[:-1]) / 2)
    return order[idx]


def quantize_tensor(w: torch.Tensor, bits: int, scheme: str = "symmetric", granularity: str = "channel",
                    dtype: str = "float16", kmeans_iters: int = 25) -> QTensor:
    """Quantize a weight tensor (rows = embedding rows / Linear output channels) under one scheme."""
    if bits == 16:
        return QTensor(16, dtype, tuple(w.shape), w.detach().to(DTYPES[dtype]).clone())
    if bits not in (8, 4, 2):
        raise ValueError(f"bits={bits}: quantize_tensor handles 16, 8, 4 or 2")
    if scheme == "kmeans":
        book, codes = kmeans_codebook(w, bits, kmeans_iters)
        return QTensor(bits, scheme, tuple(w.shape), codes, codebook=book)
    per_channel = granularity in ("channel", "row") and w.dim() > 1
    scale, zp = choose_qparams(w, bits, scheme == "symmetric", per_channel)
    q = QTensor(bits, scheme, tuple(w.shape), torch.empty(0), scale, zp)
    s = scale.float()[:, None] if per_channel else scale.float().reshape(())
    qmin, qmax = qrange(bits)
    q.codes = torch.clamp(torch.round(w.detach().float() / s) + q.zero(), qmin, qmax).to(torch.uint8)
    return q


def dequantize(q: QTensor) -> torch.Tensor:
    """Float32 reconstruction of a :class:`QTensor`."""
    if q.bits == 16:
        return q.codes.float()
    if q.codebook is not None:
        return q.codebook[q.codes.long()]
    s = q.scale.float()[:, None] if q.per_channel else q.scale.float().reshape(())
    return (q.codes.float() - q.zero()) * s


def error_bound(q: QTensor) -> torch.Tensor:
    """Worst-case |w - w_hat| for values inside the quantizer's range: half a step (per row or per tensor)."""
    if q.bits == 16:
        eps = torch.finfo(q.codes.dtype).eps
        return q.codes.float().abs() * eps / 2 + 2.0 ** -25   # + half the fp16 subnormal step
    s = q.scale.float()
    return (s[:, None] if q.per_channel else s.reshape(())) / 2


def fake_quantize(w: torch.Tensor, bits: int, scheme: str = "symmetric", granularity: str = "channel",
                  dtype: str = "float16") -> torch.Tensor:
    """Quantize-dequantize in the forward pass with a straight-through estimator (identity gradient)."""
    w_hat = dequantize(quantize_tensor(w, bits, scheme, granularity, dtype)).to(w.dtype)
    return w + (w_hat - w).detach()


def fake_quantize_activation(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int = 8
                             ) -> torch.Tensor:
    """Per-tensor asymmetric fake quant of an activation with a given (calibrated or dynamic) scale; STE gradient."""
    qmin, qmax = qrange(bits)
    x_hat = (torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale
    return x + (x_hat - x).detach()


def activation_qparams(lo: float, hi: float, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric per-tensor (scale, zero point) for an observed activation range (0 kept inside)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmin, qmax = qrange(bits)
    scale = torch.tensor(max((hi - lo) / (qmax - qmin), 1e-8))
    return scale, torch.clamp(torch.round(-lo / scale), qmin, qmax)


# ------------------------------------------------------------------------------------------------------ bit packing
def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``bits``-bit codes (rows, cols) into bytes, low bits first: (rows, ceil(cols * bits / 8)) uint8."""
    if bits == 8:
        return codes.to(torch.uint8).contiguous()
    per = 8 // bits
    rows, cols = codes.reshape(codes.shape[0], -1).shape
    padded = torch.zeros(rows, -(-cols // per) * per, dtype=torch.uint8)
    padded[:, :cols] = codes.reshape(rows, cols)
    groups = padded.view(rows, -1, per)
    out = torch.zeros(rows, groups.shape[1], dtype=torch.uint8)
    for j in range(per):
        out |= groups[:, :, j] << (j * bits)
    return out


def unpack_bits(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: (rows, cols) uint8 codes."""
    if bits == 8:
        return packed[:, :cols].clone()
    per, mask = 8 // bits, (1 << bits) - 1
    parts = [(packed >> (j * bits)) & mask for j in range(per)]
    return torch.stack(parts, dim=-1).reshape(packed.shape[0], -1)[:, :cols].contiguous()


def packed_nbytes(rows: int, cols: int, bits: int, scheme: str, per_channel: bool) -> int:
    """Bytes a quantized (rows, cols) table occupies in the artifact: packed codes + fp16 scales (+ uint8 zero points)
    or fp32 codebook."""
    if bits == 16:
        return rows * cols * 2
    n = rows * -(-cols * bits // 8)
    if scheme == "kmeans":
        return n + 4 * 2 ** bits
    groups = rows if per_channel else 1
    return n + 2 * groups + (groups if scheme == "asymmetric" else 0)


# ---------------------------------------------------------------------------------------------------- configuration
@dataclass
class QuantConfig:
    """What ``quantize_`` does; built from the ``quant`` config group."""

    bits: int = 8
    dtype: str = "float16"
    scheme: str = "symmetric"
    granularity: str = "channel"
    targets: tuple[str, ...] = DEFAULT_TARGETS
    activations: str = "dynamic"
    activation_bits: int = 8
    calibration_batches: int = 16
    backend: str = "auto"
    kmeans_iters: int = 25
    linear_bits: int | None = None       # Linear layers' own width / scheme (None = same as the embeddings')
    linear_scheme: str | None = None
    gru_bits: int | None = None          # the GRU weight matrices' own width / scheme (None = same as the embeddings')
    gru_scheme: str | None = None
    reduce_range: bool = False           # 7-bit activations in the int8 Linear/GRU kernels (pre-VNNI x86 overflow guard)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_cfg(cls, cfg: dict[str, Any]) -> QuantConfig:
        """From the ``quant`` group (unknown keys kept in ``extra``)."""
        names = set(cls.__dataclass_fields__) - {"extra"}
        kw = {k: v for k, v in cfg.items() if k in names}
        if "targets" in kw:
            kw["targets"] = tuple(kw["targets"])
        return cls(**kw, extra={k: v for k, v in cfg.items() if k not in names})

    def _own(self, kind: str) -> tuple[int | None, str | None]:
        """A kind's own (bits, scheme) override; (None, None) = the embeddings' settings."""
        return {"linear": (self.linear_bits, self.linear_scheme),
                "gru": (self.gru_bits, self.gru_scheme)}.get(kind, (None, None))

    def for_kind(self, kind: str) -> QuantConfig:
        """The settings that apply to one kind of module (``embedding``, ``linear`` or ``gru``): mixed widths such as
        4-bit embedding tables with 8-bit Linear layers are a per-kind ``bits`` / ``scheme``."""
        bits, scheme = self._own(kind)
        if bits is None and scheme is None:
            return self
        return replace(self, bits=self.bits if bits is None else bits, scheme=self.scheme if scheme is None else scheme,
                       linear_bits=None, linear_scheme=None, gru_bits=None, gru_scheme=None)

    def kernel_backend(self, kind: str | None = None) -> str:
        """The runtime that serves the quantized modules (of one kind, or of all targeted kinds when they agree):
        ``torch`` (integer kernels), ``eager`` (dequantized) or ``mixed``."""
        if kind is None:
            kinds = {self.for_kind(k).kernel_backend(k) for t, k in KINDS.items() if t in self.targets}
            return kinds.pop() if len(kinds) == 1 else "mixed"
        qc = self.for_kind(kind)
        if qc.backend != "auto":
            return qc.backend
        int_kernel = qc.bits in (8, 4, 2) and qc.scheme != "kmeans"
        return "torch" if int_kernel and (kind == "embedding" or qc.activations == "dynamic") else "eager"

    @property
    def min_bits(self) -> int:
        """The narrowest width in use (32 means nothing is quantized)."""
        return min((self.bits, *(b for b in (self.linear_bits, self.gru_bits) if b is not None)))


def check_quant(cfg: dict[str, Any]) -> list[str]:
    """Every problem with the ``quant`` group, named by key, value and what is allowed."""
    q = cfg.get("quant") or {}
    errs: list[str] = []

    def bad(key: str, allowed: Any) -> None:
        errs.append(f"quant.{key}={q.get(key)!r}: must be one of {list(allowed)}")

    if q.get("bits") not in BITS or isinstance(q.get("bits"), bool):
        bad("bits", BITS)
    for kind in ("linear", "gru"):
        b, sch = q.get(f"{kind}_bits"), q.get(f"{kind}_scheme")
        if b is not None and (b not in BITS or isinstance(b, bool)):
            bad(f"{kind}_bits", (None, *BITS))
        if sch is not None and sch not in SCHEMES:
            bad(f"{kind}_scheme", (None, *SCHEMES))
    if not isinstance(q.get("reduce_range", False), bool):
        bad("reduce_range", (True, False))
    if q.get("dtype", "float16") not in DTYPES:
        bad("dtype", DTYPES)
    if q.get("scheme", "symmetric") not in SCHEMES:
        bad("scheme", SCHEMES)
    if q.get("granularity", "channel") not in GRANULARITIES:
        bad("granularity", GRANULARITIES)
    targets = q.get("targets", list(DEFAULT_TARGETS))
    model = (cfg.get("model") or {}).get("name")
    if not isinstance(targets, (list, tuple)) or not targets or any(t not in TARGETS for t in targets):
        errs.append(f"quant.targets={targets!r}: must be a non-empty list drawn from {list(TARGETS)}")
    elif set(targets) == {"gru"} and model is not None and model not in GRU_MODELS:
        errs.append(f"quant.targets={list(targets)!r}: model={model} has no GRU, so nothing would be quantized "
                    f"(models with one: {list(GRU_MODELS)}); add embeddings / linear to quant.targets")
    if q.get("activations", "dynamic") not in ACTIVATIONS:
        bad("activations", ACTIVATIONS)
    elif q.get("activations") == "static" and (cfg.get("model") or {}).get("task") == "session":
        # calibration feeds (users, items) batches; session-parallel batches carry hidden state, and GRU4Rec's loss
        # reads the output table without calling the Linear, so no input range would be observed for it
        errs.append(f"quant.activations='static' with model={model} (a session model): static activation ranges are "
                    "calibrated for pairwise (user, item) models only; use quant.activations=dynamic or none")
    if q.get("activation_bits", 8) not in (8, 4, 2):
        bad("activation_bits", (8, 4, 2))
    if q.get("backend", "auto") not in BACKENDS:
        bad("backend", BACKENDS)
    cb = q.get("calibration_batches", 16)
    if q.get("activations") == "static" and (not isinstance(cb, int) or isinstance(cb, bool) or cb < 1):
        errs.append(f"quant.calibration_batches={cb!r}: must be a positive integer when quant.activations=static")
    if errs:
        return errs
    if q.get("backend") == "torch":
        for key in WIDTH_KEYS:
            if q.get(key) is not None and q[key] not in (8, 4, 2):
                errs.append(f"quant.backend='torch' cannot run quant.{key}={q[key]}: PyTorch's quantized kernels are "
                            "integer-only (bits 8, 4, 2); use quant.backend=eager or auto")
        for key in SCHEME_KEYS:
            if q.get(key) == "kmeans":
                errs.append(f"quant.backend='torch' cannot run quant.{key}='kmeans' (no codebook kernels); use "
                            "quant.backend=eager or auto")
        for target, kernel in (("linear", "int8 Linear"), ("gru", "dynamic int8 GRU")):
            if target in targets and q.get("activations", "dynamic") != "dynamic":
                errs.append(f"quant.backend='torch' with quant.activations={q.get('activations')!r} and {target} in "
                            f"quant.targets: its {kernel} kernel quantizes activations dynamically; use "
                            "quant.activations=dynamic or quant.backend=eager")
    return errs


def quant_summary(qc: QuantConfig) -> str:
    """Short human label (fp16, int8-sym-channel, int4-kmeans ...)."""
    def one(c: QuantConfig) -> str:
        if c.bits == 32:
            return "fp32"
        if c.bits == 16:
            return "fp16" if c.dtype == "float16" else "bf16"
        return f"int{c.bits}-{c.scheme}-{c.granularity}"

    parts = {"emb": one(qc), "linear": one(qc.for_kind("linear"))}
    if "gru" in qc.targets:
        parts["gru"] = one(qc.for_kind("gru"))
    labels = set(parts.values())
    return labels.pop() if len(labels) == 1 else " + ".join(f"{k} {v}" for k, v in parts.items())


def trainable_params(model: nn.Module) -> int:
    """Parameters that still require grad (after conversion quantized weights are buffers)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------------------------- techniques
from recsys.compress.base import CompressContext, Technique, register  # noqa: E402  (techniques use the above)


class _Quant(Technique):
    group = "quant"

    @property
    def qc(self) -> QuantConfig:
        return QuantConfig.from_cfg(self.cfg)

    def _report(self, ctx: CompressContext, stats: dict[str, float]) -> None:
        qc = self.qc
        ctx.metrics.update(stats)
        if qc.min_bits != 32:
            ctx.artifact_format = "quantized"
        backend = qc.kernel_backend() if qc.min_bits != 32 else "eager"
        kernels = {"torch": "torch.ops.quantized int kernels", "eager": "dequantized fp32",
                   "mixed": "int kernels where the width has one, dequantized fp32 elsewhere"}[backend]
        ctx.params.update({"quant_scheme": quant_summary(qc), "quant_kernels": backend,
                           "latency_backend": f"pytorch-eager ({kernels})"})


@register
class PostTrainingQuantization(_Quant):
    """``quant.method=ptq``: quantize after all training (so prune -> fine-tune -> quantize composes), optionally with
    static activation ranges calibrated on ``quant.calibration_batches`` training batches."""

    method = "ptq"
    label = "ptq"

    @classmethod
    def check(cls, cfg: dict[str, Any]) -> list[str]:
        return check_quant(cfg)

    def finalize(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        from recsys.compress.quant_callback import calibrate, quantize_

        qc = self.qc
        ranges = None
        if qc.activations == "static" and qc.for_kind("linear").bits <= 8 and "linear" in qc.targets:
            dm = ctx.family.make_datamodule(ctx.data, ctx.cfg)
            ranges = calibrate(model, dm.train_dataloader(), qc.calibration_batches)
        self._report(ctx, quantize_(model, qc, ranges))
        return model


@register
class QuantizationAwareTraining(_Quant):
    """``quant.method=qat``: fake quantization (STE) of weights and optionally activations during the fine-tune stage
    via :class:`~recsys.compress.quant_callback.QuantizationCallback`, converted to packed integers at the end."""

    method = "qat"
    label = "qat"

    @classmethod
    def check(cls, cfg: dict[str, Any]) -> list[str]:
        errs = check_quant(cfg)
        q = cfg.get("quant") or {}
        epochs = (cfg.get("finetune") or {}).get("epochs", 0)
        if not isinstance(epochs, int) or epochs <= 0:
            errs.append(f"quant.method=qat needs a fine-tune stage: finetune.epochs={epochs!r} must be >= 1")
        for key in WIDTH_KEYS:
            if q.get(key) in (32, 16):
                errs.append(f"quant.{key}={q.get(key)} with quant.method=qat: QAT is for integer widths 8, 4, 2 "
                            "(use quant.method=ptq for fp16/bf16)")
        for key in SCHEME_KEYS:
            if q.get(key) == "kmeans":
                errs.append(f"quant.{key}='kmeans' with quant.method=qat: the codebook is fitted post-training only; "
                            "use quant.method=ptq or a uniform scheme")
        return errs

    def apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        from recsys.compress.quant_callback import attach_fake_quant

        attach_fake_quant(model, self.qc)   # so the "qat" stage row shows the quantized model before fine-tuning
        return model

    def callbacks(self, ctx: CompressContext) -> list[Any]:
        from recsys.compress.quant_callback import QuantizationCallback

        select_best = bool((ctx.cfg.get("finetune") or {}).get("select_best", False))
        self._callback = QuantizationCallback(self.qc, convert_at_end=not select_best)
        return [self._callback]

    def finalize(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        from recsys.compress.quant_callback import is_converted, quantize_

        cb = getattr(self, "_callback", None)
        stats = cb.report if cb is not None and cb.report and is_converted(model) else quantize_(model, self.qc)
        self._report(ctx, stats)
        return model
