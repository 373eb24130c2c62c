"""The one place that decides how a finished model is encoded in its artifact.

``quantized`` when it holds quantized modules; else ``sparse`` when a technique allows it (``ships_sparse``, magnitude
pruning) and the sparse encoding is smaller; else ``dense``; wrapped as ``lowrank[+<fmt>]`` when modules are factorised.
"""
from __future__ import annotations

from torch import nn

from recsys.export.lowrank import with_structure
from recsys.export.sparse import sparse_is_smaller
from recsys.nn.quantized import QuantizedEmbedding, QuantizedGRU, QuantizedLinear


def artifact_format(model: nn.Module, sparse_ok: bool = False) -> str:
    """The registered artifact format to ship ``model`` in (see the module docstring)."""
    if any(isinstance(m, (QuantizedEmbedding, QuantizedLinear, QuantizedGRU)) for m in model.modules()):
        fmt = "quantized"
    elif sparse_ok and sparse_is_smaller(model):
        fmt = "sparse"
    else:
        fmt = "dense"
    return with_structure(model, fmt)
