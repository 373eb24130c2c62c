"""Low-rank factorisation (``lowrank.method=svd``): truncated SVD of embedding tables and Linear layers.

Each targeted matrix W (m x n) is replaced by two thin factors of rank r, chosen by ``lowrank.rank`` or by the smallest
rank that keeps ``lowrank.energy`` of the squared singular values. The factorised modules are ordinary torch modules
(an ``nn.Embedding`` of width r followed by an ``nn.Linear`` r -> n), so the artifact stores m*r + r*n numbers instead of
m*n; ``recsys.export.lowrank`` records which modules were factorised so the artifact can rebuild them.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recsys.errors import ConfigError
from recsys.nn.factorized import FactorizedEmbedding, FactorizedLinear, restore_structure, set_module, structure

TARGETS = ("embeddings", "linear")


@dataclass
class LowRankConfig:
    """What to factorise and how far: exactly one of ``rank`` / ``energy``."""

    rank: int | None = None
    energy: float | None = None
    targets: tuple[str, ...] = ("embeddings",)


@torch.no_grad()
def svd_factors(weight: torch.Tensor, rank: int | None = None, energy: float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truncated SVD W ~= A @ B with A = U_r diag(S_r), B = V_r^T; returns (A, B, all singular values)."""
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    if rank is None:
        if energy is None:
            raise ValueError("svd_factors needs rank or energy")
        kept = torch.cumsum(s ** 2, 0) / (s ** 2).sum().clamp_min(1e-300)
        rank = int(torch.searchsorted(kept, torch.tensor(float(energy), dtype=kept.dtype) - 1e-12).item()) + 1
        rank = min(rank, len(s))
    a = (u[:, :rank] * s[:rank]).to(weight.dtype)
    b = vh[:rank].to(weight.dtype)
    return a, b, s.to(weight.dtype)


def _plain_targets(model: nn.Module, targets: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """Embedding tables / Linear layers to factorise. Width-1 matrices are left alone: Linear score heads, and DeepFM's
    first-order (per-feature weight) tables, which no rank >= 1 can shrink."""
    out = []
    for path, m in model.named_modules():
        if isinstance(m, (FactorizedEmbedding, FactorizedLinear)) or ".first" in path or ".second" in path:
            continue
        if "embeddings" in targets and type(m) is nn.Embedding and min(m.weight.shape) > 1:
            out.append((path, m))
        elif "linear" in targets and type(m) is nn.Linear and min(m.in_features, m.out_features) > 1:
            out.append((path, m))
    return out


@torch.no_grad()
def factorize_(model: nn.Module, config: LowRankConfig) -> dict[str, Any]:
    """Replace targeted matrices of ``model`` in place by rank-r factors; returns per-module ranks and errors.

    A fixed ``rank`` must be below every targeted embedding's smaller dimension (raises ``ConfigError`` otherwise);
    Linear layers where rank r would not save parameters (r * (m + n) >= m * n) are skipped. With ``energy`` a matrix
    whose required rank saves nothing is kept dense.
    """
    report: dict[str, Any] = {"modules": {}, "params_before": 0, "params_after": 0}
    for path, m in _plain_targets(model, config.targets):
        w = m.weight  # Embedding: (num, dim); Linear: (out, in)
        rows, cols = w.shape
        small = min(rows, cols)
        if config.rank is not None:
            if config.rank >= small:
                if isinstance(m, nn.Embedding):
                    raise ConfigError(f"lowrank.rank={config.rank}: must be smaller than the smaller dimension "
                                      f"({small}) of embedding table {path} {tuple(w.shape)}")
                continue
            if config.rank * (rows + cols) >= rows * cols:
                continue
        a, b, s = svd_factors(w, rank=config.rank, energy=config.energy)
        r = a.shape[1]
        if r * (rows + cols) >= rows * cols:
            continue  # energy asked for a rank that saves nothing: keep the dense matrix
        if isinstance(m, nn.Embedding):
            new: nn.Module = FactorizedEmbedding(rows, cols, r, m.padding_idx)
            new.first.weight.copy_(a)
            if m.padding_idx is not None:
                new.first.weight[m.padding_idx] = 0.0   # exactly, not SVD round-off
            new.second.weight.copy_(b.T)
            kind = "embedding"
        else:
            new = FactorizedLinear(cols, rows, r, bias=m.bias is not None)
            new.first.weight.copy_(b)        # (r, in)
            new.second.weight.copy_(a)       # (out, r)
            if m.bias is not None:
                new.second.bias.copy_(m.bias)
            kind = "linear"
        new.to(w.device)
        set_module(model, path, new)
        err = torch.linalg.matrix_norm(w - (a @ b)).item()
        discarded = float(s[r:].pow(2).sum().sqrt())
        report["modules"][path] = {"kind": kind, "rank": r, "shape": (rows, cols), "fro_error": err,
                                   "discarded_sv_norm": discarded,
                                   "energy_kept": float((s[:r] ** 2).sum() / (s ** 2).sum().clamp_min(1e-30))}
        report["params_before"] += rows * cols
        report["params_after"] += r * (rows + cols)
    return report


def static_embedding_dims(model_cfg: Mapping[str, Any]) -> dict[str, int]:
    """Embedding widths known from the model config alone (NCF-style keys), for checks before any training."""
    dims: dict[str, int] = {}
    if isinstance(model_cfg.get("factors"), int):
        dims["model.factors"] = model_cfg["factors"]
    if isinstance(model_cfg.get("embed_dim"), int):      # DeepFM's shared field-embedding width
        dims["model.embed_dim"] = model_cfg["embed_dim"]
    for key in ("mlp_layers", "layers"):
        v = model_cfg.get(key)
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], int):
            dims[f"model.{key}[0]/2"] = v[0] // 2
    return dims

__all__ = ["LowRankConfig", "factorize_", "restore_structure", "structure", "svd_factors", "TARGETS"]
