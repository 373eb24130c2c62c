"""Artifact format ``lowrank``: a model with SVD-factorised modules.

The artifact's ``spec`` rebuilds the original (dense-shaped) model; the payload records which modules were factorised
(path, kind, rank, shape) so the loader swaps in empty ``FactorizedEmbedding`` / ``FactorizedLinear`` modules before
loading the thin factors. ``lowrank+<fmt>`` wraps any other registered format the same way (e.g. a low-rank model that
is also quantized), registered on first use through :func:`composite`.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from recsys.export import artifact
from recsys.nn.factorized import restore_structure, structure


def _encoder(inner: str):
    def encode(model: nn.Module) -> dict[str, Any]:
        return {"structure": structure(model), "inner_format": inner, "inner": artifact.codec(inner)[0](model)}
    return encode


def _decode(model: nn.Module, payload: dict[str, Any]) -> nn.Module:
    restore_structure(model, payload["structure"])
    return artifact.codec(payload["inner_format"])[1](model, payload["inner"])


def composite(inner: str) -> str:
    """Register (once) and return the format name that stores the factor structure around format ``inner``."""
    if inner == "lowrank" or inner.startswith("lowrank+"):
        return inner
    name = "lowrank" if inner == "dense" else f"lowrank+{inner}"
    if not artifact.is_registered(name):
        artifact.register_format(name, _encoder(inner), _decode)
    return name


composite("dense")


def with_structure(model: nn.Module, fmt: str) -> str:
    """The format to ship ``model`` in: ``fmt`` itself, or its ``lowrank`` wrapper when modules are factorised
    (so low-rank composes with the sparse / quantized encodings chosen by later techniques)."""
    return composite(fmt) if structure(model) else fmt
