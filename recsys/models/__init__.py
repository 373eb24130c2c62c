"""Plain torch recommender models. Each model class exposes ``config()`` -> kwargs with a ``_target_`` import path, so an
artifact can rebuild it with ``build_model`` without knowing which model it is."""
from __future__ import annotations

import importlib
import pkgutil
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


def model_class(model_cfg: dict[str, Any]) -> type[nn.Module] | None:
    """The model class a ``model`` config group names: its ``_target_``, else the class whose name is ``model.name``
    (case-insensitive) in any ``recsys.models`` module; None when neither resolves (checks then skip model specifics)."""
    target = str(model_cfg.get("_target_") or "")
    if target.startswith("recsys.models."):
        module, _, cls = target.rpartition(".")
        try:
            return getattr(importlib.import_module(module), cls, None)
        except ImportError:
            return None
    name = str(model_cfg.get("name") or "").lower()
    import recsys.models as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name == "base":
            continue
        mod = importlib.import_module(f"recsys.models.{info.name}")
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__name__.lower() == name \
                    and hasattr(obj, "family"):
                return obj
    return None
