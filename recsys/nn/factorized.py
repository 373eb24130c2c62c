"""Factorised (low-rank) runtime modules: an embedding table or a Linear stored as two thin factors of rank r.

Bottom layer: ``recsys.compress.lowrank`` creates them (truncated SVD) and ``recsys.export.lowrank`` records and rebuilds
them from artifacts; neither imports the other.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


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


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


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
        set_module(model, path, new)
    return model
