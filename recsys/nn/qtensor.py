"""Quantized tensors from 16 down to 2 bits: the pure tensor functions (choose qparams, quantize, dequantize, fake
quantize, bit packing) that both compression (``recsys.compress.quant``) and the artifact codecs (``recsys.export``) use.

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

from dataclasses import dataclass

import torch

BITS = (32, 16, 8, 4, 2)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
SCHEMES = ("symmetric", "asymmetric", "kmeans")
GRANULARITIES = ("tensor", "channel", "row")   # "row" (embedding tables) is the same axis as "channel" (Linear out)
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
