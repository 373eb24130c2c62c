"""Plain torch recommender models. Each model class exposes ``config()`` -> kwargs with a ``_target_`` import path, so an
artifact can rebuild it with ``build_model`` without knowing which model it is."""
from __future__ import annotations

import importlib
from typing import Any

from torch import nn


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Instantiate a model from ``{"_target_": "pkg.mod.Class", **kwargs}`` (what ``model.config()`` returns)."""
    spec = dict(spec)
    target = spec.pop("_target_")
    module, _, cls = target.rpartition(".")
    if not module.startswith("recsys.models."):
        raise ValueError(f"refusing to build a model from {target!r}: only recsys.models.* classes are allowed")
    return getattr(importlib.import_module(module), cls)(**spec)
