"""The quantization verbs (torchao's ``quantize_(model, config)`` style): ``quantize_`` swaps Embedding/Linear/GRU
modules for quantized ones, ``attach_fake_quant`` adds QAT parametrisations, ``calibrate`` observes activation ranges.

Modules are found by type (``nn.Embedding`` / ``nn.Linear`` / ``nn.GRU``), never by model name; a model holding
weights of a kind this quantizer does not cover (``nn.MultiheadAttention``'s packed projections, other RNNs) is
refused with an error rather than left silently in fp32."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from recsys.compress.quant.config import QuantConfig
from recsys.nn.qtensor import (
    activation_qparams,
    dequantize,
    fake_quantize,
    fake_quantize_activation,
    packed_nbytes,
    quantize_tensor,
)
from recsys.nn.quantized import QuantizedEmbedding, QuantizedGRU, QuantizedLinear, gru_args, gru_weight_names

_MODULES = {"embeddings": nn.Embedding, "linear": nn.Linear, "gru": nn.GRU}   # quant.targets entry -> module type


def _kind(m: nn.Module) -> str:
    return "embedding" if isinstance(m, nn.Embedding) else "gru" if isinstance(m, nn.GRU) else "linear"


# Modules whose weights this quantizer has no runtime module for: refused, so no weight is silently left in fp32.
# (nn.MultiheadAttention reads ``in_proj_weight`` / ``out_proj.weight`` directly inside F.multi_head_attention_forward,
# so swapping its ``out_proj`` for a QuantizedLinear would not even take effect.) A model that wants its attention
# quantized builds it from nn.Linear projections, which are found by type like every other Linear.
UNSUPPORTED = (nn.MultiheadAttention, nn.LSTM, nn.RNN)


def unsupported_modules(model: nn.Module) -> list[str]:
    """``name (type)`` of every module holding weights that ``quantize_`` / ``attach_fake_quant`` cannot quantize."""
    return [f"{n or '<model>'} ({type(m).__name__})" for n, m in model.named_modules() if isinstance(m, UNSUPPORTED)]


def _targets(model: nn.Module, qc: QuantConfig) -> list[tuple[str, nn.Module]]:
    bad = unsupported_modules(model)
    if bad:
        raise NotImplementedError(f"quant: {type(model).__name__} has modules whose weights cannot be quantized here: "
                                  f"{bad}; build attention from nn.Linear projections (quantized like any Linear) "
                                  "or run without quant")
    kinds = tuple(k for t, k in _MODULES.items() if t in qc.targets)
    done = (QuantizedEmbedding, QuantizedLinear)   # subclasses of nn.Embedding / nn.Linear: never quantize twice
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds) and not isinstance(m, done)] \
        if kinds else []


def _gru_matrices(gru: nn.GRU) -> list[str]:
    """Names of an nn.GRU's weight matrices (``weight_ih_l0``, ``weight_hh_l0``, ...); biases are not quantized."""
    return [n for group in gru_weight_names(gru.num_layers, gru.bidirectional) for n in group[:2]]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def plain_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The module's weight ``name`` with pruning masks / parametrisations made permanent (pruned weights stay exact
    zeros; fake quant is dropped, leaving the latent weight it quantizes)."""
    if hasattr(module, f"{name}_orig"):                     # torch.nn.utils.prune reparametrisation
        torch.nn.utils.prune.remove(module, name)
    if parametrize.is_parametrized(module, name):           # our fake quant or torch.nn.utils.parametrize masks
        parametrize.remove_parametrizations(module, name, leave_parametrized=not _is_fake_quant(module, name))
    return getattr(module, name).detach()


def _is_fake_quant(module: nn.Module, name: str = "weight") -> bool:
    return parametrize.is_parametrized(module, name) and any(
        isinstance(p, WeightFakeQuant) for p in module.parametrizations[name])


def _fake_quantized(module: nn.Module) -> bool:
    """Whether any tensor of ``module`` carries weight fake quant."""
    return parametrize.is_parametrized(module) and any(_is_fake_quant(module, n) for n in module.parametrizations)


@torch.no_grad()
def quantize_(model: nn.Module, qc: QuantConfig, act_ranges: dict[str, tuple[float, float]] | None = None
              ) -> dict[str, float]:
    """Replace the targeted Embedding/Linear/GRU modules of ``model`` by quantized ones, in place; returns what it
    did (modules, nominal packed bytes vs fp32 bytes per kind, max reconstruction error). A target the model has no
    module of (``gru`` on NeuMF) quantizes nothing."""
    if qc.min_bits == 32:
        return {"quant_modules": 0.0}
    stats = {"quant_modules": 0.0, "quant_max_abs_error": 0.0}
    kinds = ("embedding", "linear", *(("gru",) if "gru" in qc.targets else ()))
    for kind in kinds:
        stats[f"quant_{kind}_bytes"] = stats[f"quant_{kind}_bytes_fp32"] = 0.0
    for name, m in _targets(model, qc):
        kind = _kind(m)
        kq = qc.for_kind(kind)
        if kq.bits == 32:            # e.g. quant.linear_bits=32: this kind stays fp32
            continue
        if kind == "gru":
            _replace(model, name, _quantize_gru(m, kq, stats))
            stats["quant_modules"] += 1
            continue
        act = _act_from_module(m, act_ranges.get(name) if act_ranges else None, kq)
        w = plain_weight(m)
        q = quantize_tensor(w, kq.bits, kq.scheme, kq.granularity, kq.dtype, kq.kmeans_iters)
        if kind == "embedding":
            new: nn.Module = QuantizedEmbedding(q, kq.kernel_backend(kind))
        else:
            new = QuantizedLinear(q, m.bias, kq.kernel_backend(kind), kq.activations if act is None else "static", act,
                                  kq.activation_bits, kq.reduce_range)
        _replace(model, name, new)
        stats["quant_modules"] += 1
        stats[f"quant_{kind}_bytes"] += packed_nbytes(*w.shape, kq.bits, kq.scheme, q.per_channel)
        stats[f"quant_{kind}_bytes_fp32"] += 4 * w.numel()
        stats["quant_max_abs_error"] = max(stats["quant_max_abs_error"], float((dequantize(q) - w).abs().max()))
    for kind in kinds:
        if stats[f"quant_{kind}_bytes"]:
            stats[f"quant_{kind}_ratio"] = stats[f"quant_{kind}_bytes_fp32"] / stats[f"quant_{kind}_bytes"]
    return stats


def _quantize_gru(gru: nn.GRU, kq: QuantConfig, stats: dict[str, float]) -> QuantizedGRU:
    """One :class:`QuantizedGRU` from an nn.GRU: every weight matrix per row (= per gate unit) or per tensor."""
    weights = {}
    for n in _gru_matrices(gru):
        w = plain_weight(gru, n)
        q = weights[n] = quantize_tensor(w, kq.bits, kq.scheme, kq.granularity, kq.dtype, kq.kmeans_iters)
        stats["quant_gru_bytes"] += packed_nbytes(*w.shape, kq.bits, kq.scheme, q.per_channel)
        stats["quant_gru_bytes_fp32"] += 4 * w.numel()
        stats["quant_max_abs_error"] = max(stats["quant_max_abs_error"], float((dequantize(q) - w).abs().max()))
    biases = {n: plain_weight(gru, n) for group in gru_weight_names(gru.num_layers, gru.bidirectional)
              for n in group[2:] if gru.bias}
    new = QuantizedGRU(weights, biases, gru_args(gru), kq.kernel_backend("gru"), kq.reduce_range)
    return new.train(gru.training)   # inter-layer dropout follows the mode the model is in


def _act_from_module(m: nn.Module, observed: tuple[float, float] | None, qc: QuantConfig
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Static activation qparams: from calibration, or from the QAT observer attached to the module."""
    if qc.activations != "static" or qc.bits == 16 or not isinstance(m, nn.Linear):
        return None
    fq = getattr(m, "act_fake_quant", None)
    if observed is None and fq is not None and fq.observed:
        observed = (float(fq.lo), float(fq.hi))
    if observed is None:
        raise ValueError("quant.activations=static needs calibration: run calibrate() first")
    return activation_qparams(*observed, qc.activation_bits)


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], n_batches: int) -> dict[str, tuple[float, float]]:
    """Observed (min, max) of every Linear's input over ``n_batches`` training batches (PTQ static activations)."""
    ranges: dict[str, tuple[float, float]] = {}
    hooks = []

    def observe(name: str):
        def hook(_m: nn.Module, args: tuple) -> None:
            x = args[0]
            lo, hi = ranges.get(name, (float("inf"), float("-inf")))
            ranges[name] = (min(lo, float(x.min())), max(hi, float(x.max())))
        return hook

    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_pre_hook(observe(name)))
    was_training = model.training
    model.eval()
    try:
        for i, batch in enumerate(batches):
            if i >= n_batches:
                break
            model(batch[0], batch[1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return ranges


# -------------------------------------------------------------------------------------------------------------- QAT
class WeightFakeQuant(nn.Module):
    """Parametrisation ``weight -> fake_quantize(weight)``: quantized forward, straight-through backward."""

    def __init__(self, bits: int, scheme: str, granularity: str, dtype: str) -> None:
        super().__init__()
        self.bits, self.scheme, self.granularity, self.dtype = bits, scheme, granularity, dtype

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize(w, self.bits, self.scheme, self.granularity, self.dtype)


class ActFakeQuant(nn.Module):
    """Activation fake quant for QAT: observes the input range (EMA while training), quantizes with it."""

    def __init__(self, bits: int = 8, mode: str = "static", momentum: float = 0.1) -> None:
        super().__init__()
        self.bits, self.mode, self.momentum = bits, mode, momentum
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("n_seen", torch.tensor(0))

    @property
    def observed(self) -> bool:
        return bool(self.n_seen > 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = float(x.detach().min()), float(x.detach().max())
        # observe on gradient-carrying (training) forwards: Lightning >= 2.2 keeps submodules' train/eval mode as it
        # found them, so ``self.training`` alone would miss a model that was evaluated just before fine-tuning
        if self.mode == "static" and (self.training or torch.is_grad_enabled()):
            with torch.no_grad():
                if not self.observed:
                    self.lo.fill_(lo), self.hi.fill_(hi)
                else:
                    self.lo.lerp_(torch.tensor(lo), self.momentum), self.hi.lerp_(torch.tensor(hi), self.momentum)
                self.n_seen += 1
        if self.mode == "static" and self.observed:
            lo, hi = float(self.lo), float(self.hi)
        s, z = activation_qparams(lo, hi, self.bits)
        return fake_quantize_activation(x, s, z, self.bits)


def _leaf_flat_weights(gru: nn.GRU, _args: Any, _out: Any) -> None:
    """After a forward, point nn.GRU's cached flat weights back at the latent leaves: the fake-quantized copies are
    recomputed on every forward anyway (``RNNBase._update_flat_weights``), and non-leaf tensors cached on the module
    would make it impossible to deep-copy."""
    gru._flat_weights = [gru.parametrizations[n].original if parametrize.is_parametrized(gru, n) else getattr(gru, n)
                         for n in gru._flat_weights_names]


def attach_fake_quant(model: nn.Module, qc: QuantConfig) -> int:
    """Register weight fake quant (and activation fake quant on Linear inputs) on the targeted modules; idempotent.
    Returns how many modules carry fake quant. GRU weight matrices get weight fake quant only: the dynamic int8 GRU
    kernel quantizes its activations per call, which training leaves in fp32."""
    n = 0
    for _, m in _targets(model, qc):
        kq = qc.for_kind(_kind(m))
        if kq.bits == 32:
            continue
        if isinstance(m, nn.GRU):
            if not _fake_quantized(m):
                for w in _gru_matrices(m):
                    if hasattr(m, f"{w}_orig"):
                        torch.nn.utils.prune.remove(m, w)
                    parametrize.register_parametrization(m, w, WeightFakeQuant(kq.bits, kq.scheme, kq.granularity,
                                                                               kq.dtype))
                m.register_forward_hook(_leaf_flat_weights)
            n += 1
            continue
        if not _is_fake_quant(m):
            if hasattr(m, "weight_orig"):
                torch.nn.utils.prune.remove(m, "weight")
            parametrize.register_parametrization(m, "weight", WeightFakeQuant(kq.bits, kq.scheme, kq.granularity,
                                                                              kq.dtype))
            if isinstance(m, nn.Linear) and qc.activations != "none":
                m.act_fake_quant = ActFakeQuant(qc.activation_bits, qc.activations)
                m.register_forward_pre_hook(lambda mod, args: (mod.act_fake_quant(args[0]),))
        n += 1
    return n


def is_converted(model: nn.Module) -> bool:
    """True once no fake quant is left (``convert`` ran)."""
    return not any(_fake_quantized(m) for m in model.modules())
