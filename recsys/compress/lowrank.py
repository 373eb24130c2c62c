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

from recsys.compress.base import CompressContext, Technique, register
from recsys.errors import ConfigError

TARGETS = ("embeddings", "linear")


class FactorizedEmbedding(nn.Module):
    """An embedding table stored as ``first`` (num_embeddings x r) times ``second`` (r -> embedding_dim)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.rank = num_embeddings, embedding_dim, rank
        # a padding row (DeepFM's multi-hot genre bags) must stay zero and untrained in the factorised table too
        self.first = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx)
        self.second = nn.Linear(rank, embedding_dim, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(idx))

    @property
    def weight(self) -> torch.Tensor:
        """The full table (models read ``.weight`` for full-catalogue scoring); computed, never stored."""
        return self.first.weight @ self.second.weight.T


class FactorizedLinear(nn.Linear):
    """y = second(first(x)), W = second.weight @ first.weight (rank r).

    Subclasses ``nn.Linear`` only so that model code that looks for "the first Linear" (``MLP.all_vectors`` splits it
    into user and item halves through ``.weight``) keeps working; it owns no ``weight`` parameter of its own.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        nn.Module.__init__(self)  # deliberately skip nn.Linear.__init__: no dense weight parameter
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self.second.weight @ self.first.weight

    @property
    def bias(self) -> torch.Tensor | None:  # type: ignore[override]
        return self.second.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


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


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


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
        _set_module(model, path, new)
        err = torch.linalg.matrix_norm(w - (a @ b)).item()
        discarded = float(s[r:].pow(2).sum().sqrt())
        report["modules"][path] = {"kind": kind, "rank": r, "shape": (rows, cols), "fro_error": err,
                                   "discarded_sv_norm": discarded,
                                   "energy_kept": float((s[:r] ** 2).sum() / (s ** 2).sum().clamp_min(1e-30))}
        report["params_before"] += rows * cols
        report["params_after"] += r * (rows + cols)
    return report


def structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Which modules are factorised and how: ``{path: {kind, rank, shape}}`` (what an artifact must record)."""
    out = {}
    for path, m in model.named_modules():
        if isinstance(m, FactorizedEmbedding):
            out[path] = {"kind": "embedding", "rank": m.rank, "shape": (m.num_embeddings, m.embedding_dim),
                         "padding_idx": m.first.padding_idx}
        elif isinstance(m, FactorizedLinear):
            out[path] = {"kind": "linear", "rank": m.rank, "shape": (m.out_features, m.in_features),
                         "bias": m.second.bias is not None}
    return out


def restore_structure(model: nn.Module, struct: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """Replace the dense modules of a freshly built model by empty factorised ones (weights loaded afterwards)."""
    for path, spec in struct.items():
        rows, cols = spec["shape"]
        if spec["kind"] == "embedding":
            new: nn.Module = FactorizedEmbedding(rows, cols, int(spec["rank"]), spec.get("padding_idx"))
        else:
            new = FactorizedLinear(cols, rows, int(spec["rank"]), bias=bool(spec.get("bias", True)))
        _set_module(model, path, new)
    return model


def _static_embedding_dims(model_cfg: Mapping[str, Any]) -> dict[str, int]:
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


@register
class LowRankSVD(Technique):
    """Truncated-SVD factorisation of embedding tables (and optionally Linear layers)."""

    group = "lowrank"
    method = "svd"
    label = "lowrank"

    @classmethod
    def check(cls, cfg: Mapping[str, Any]) -> list[str]:
        """rank xor energy, valid ranges, known targets, rank below every embedding width of the model config."""
        g = cfg.get("lowrank", {})
        rank, energy, targets = g.get("rank"), g.get("energy"), g.get("targets", ["embeddings"])
        errs: list[str] = []
        if (rank is None) == (energy is None):
            errs.append(f"lowrank.rank={rank!r}, lowrank.energy={energy!r}: set exactly one of them "
                        "(e.g. lowrank.rank=8 or lowrank.energy=0.9 with lowrank.rank=null)")
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
            errs.append(f"lowrank.rank={rank!r}: must be a positive integer")
        if energy is not None and (isinstance(energy, bool) or not isinstance(energy, (int, float))
                                   or not 0.0 < energy <= 1.0):
            errs.append(f"lowrank.energy={energy!r}: must be a number in (0, 1]")
        if not isinstance(targets, (list, tuple)) or not targets or any(t not in TARGETS for t in targets):
            errs.append(f"lowrank.targets={targets!r}: must be a non-empty list drawn from {list(TARGETS)}")
        if isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1 and "embeddings" in (targets or []):
            model_cfg = dict(cfg.get("model", {}))
            d = cfg.get("distill", {})
            if isinstance(d, Mapping) and d.get("method", "none") not in (None, "none"):
                # low-rank runs after distillation, i.e. on the student
                model_cfg.update({k: v for k, v in (d.get("student") or {}).items() if v is not None})
            for key, dim in _static_embedding_dims(model_cfg).items():
                if rank >= dim:
                    errs.append(f"lowrank.rank={rank}: must be smaller than every embedding width, but {key}={dim} "
                                "(a rank >= the matrix's smaller dimension saves nothing)")
        return errs

    def apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        config = LowRankConfig(rank=self.cfg.get("rank"), energy=self.cfg.get("energy"),
                               targets=tuple(self.cfg.get("targets", ["embeddings"])))
        report = factorize_(model, config)
        mods = report["modules"]
        ctx.metrics["lowrank_modules"] = float(len(mods))
        ctx.metrics["lowrank_params_ratio"] = report["params_after"] / max(report["params_before"], 1)
        if mods:
            ctx.metrics["lowrank_mean_energy_kept"] = sum(m["energy_kept"] for m in mods.values()) / len(mods)
            ctx.metrics["lowrank_max_rank"] = float(max(m["rank"] for m in mods.values()))
        ctx.params["lowrank_ranks"] = ",".join(f"{p}:{m['rank']}" for p, m in mods.items()) or "(none)"
        return model

    def finalize(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        if structure(model) and ctx.artifact_format == "dense":
            ctx.artifact_format = "lowrank"
        return model
