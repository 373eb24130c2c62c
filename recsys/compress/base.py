"""The shape every compression technique takes, and the registry the pipeline reads.

A technique lives in its package ``recsys/compress/<group>/`` (the verb + config in the package, its Lightning callback
in ``callback.py``, a ``Technique`` subclass decorated with ``@register`` in ``technique.py``) plus one YAML in its
config group (``conf/prune/magnitude.yaml`` ...). The pipeline runs the configured techniques in the fixed order of
DESIGN.md — distill -> lowrank -> prune -> quant — in three phases:

1. ``apply(model, ctx)`` before the fine-tune stage (add masks, shrink, insert fake quantizers, build a student ...);
2. ``callbacks(ctx)`` — Lightning callbacks active during fine-tuning (keep masks, gradual schedule, QAT, teacher);
3. ``finalize(model, ctx)`` after fine-tuning (strip reparametrisations, convert to integers ...).

Techniques are pure model -> model functions wrapped for the pipeline: they never import MLflow; they report figures
through ``ctx.metrics``. The artifact encoding is decided in one place, ``recsys.export.formats.artifact_format``, from
the finished model (quantized modules, factorised modules) and whether a technique ships sparse (``ships_sparse``).
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from torch import nn

ORDER = ("distill", "lowrank", "prune", "quant")
_REGISTRY: dict[tuple[str, str], type[Technique]] = {}


class Trainer(Protocol):
    """What techniques may ask of the job's trainer (``recsys.tasks.fit.StageTrainer``)."""

    def train(self, model: nn.Module, stage: str, **kwargs: Any) -> dict[str, float]: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...


@dataclass
class CompressContext:
    """What a technique may use: the config, the data, the frozen dense model, and the job's trainer."""

    cfg: Any
    data: Any
    family: Any
    dense: nn.Module
    trainer: Trainer                 # train(model, stage, lr=None, optimizer=None, epochs=None, data_fraction=1.0,
    #                                          callbacks=(), select_best=True) -> info; evaluate(model) -> figures
    metrics: dict[str, float] = field(default_factory=dict)   # logged under final/ (e.g. sparsity reached)
    params: dict[str, Any] = field(default_factory=dict)      # logged as tags (e.g. backend names)

    def train(self, model: nn.Module, stage: str, **kwargs: Any) -> dict[str, float]:
        return self.trainer.train(model, stage, **kwargs)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self.trainer.evaluate(model)


class Technique:
    """Base class: override the phases you need. ``self.cfg`` is the technique's config group as a plain dict."""

    group: ClassVar[str] = ""
    method: ClassVar[str] = ""
    label: ClassVar[str] = "compressed"   # stage name for metrics when this technique runs alone
    ships_sparse: ClassVar[bool] = False  # the artifact may use the sparse encoding (when it is smaller)

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = dict(cfg)

    @classmethod
    def check(cls, cfg: Mapping[str, Any]) -> list[str]:
        """Problems with the whole job config (named by key, value and what is allowed); empty when fine."""
        return []

    @classmethod
    def is_noop(cls, group_cfg: Mapping[str, Any]) -> bool:
        """True when these settings change nothing (``prune.ratio=0``): no stage runs and the job is reported as not
        compressed, so a sweep may start from the group's neutral default."""
        return False

    def apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        return model

    def callbacks(self, ctx: CompressContext) -> list[Any]:
        return []

    def finalize(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        return model


def register(cls: type[Technique]) -> type[Technique]:
    """Class decorator: make ``<group>.method=<method>`` select this technique."""
    _REGISTRY[(cls.group, cls.method)] = cls
    return cls


def _import_all() -> None:
    """Import every technique package's ``technique`` module (``recsys/compress/<group>/technique.py``)."""
    import recsys.compress as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.ispkg:
            importlib.import_module(f"recsys.compress.{mod.name}.technique")


def methods(group: str) -> list[str]:
    _import_all()
    return sorted(["none"] + [m for g, m in _REGISTRY if g == group])


def technique_class(group: str, method: str) -> type[Technique] | None:
    _import_all()
    return _REGISTRY.get((group, method))


def _selected(cfg: Mapping[str, Any]) -> list[tuple[str, str, type[Technique] | None]]:
    """(group, method, class or None when unknown) of every group whose method is not ``none`` and whose settings do
    something (``Technique.is_noop``), in pipeline order."""
    out = []
    for group in ORDER:
        g = cfg.get(group)
        if isinstance(g, Mapping) and g.get("method", "none") not in (None, "none"):
            cls = technique_class(group, g["method"])
            if cls is None or not cls.is_noop(g):
                out.append((group, g["method"], cls))
    return out


def active_groups(cfg: Mapping[str, Any]) -> list[str]:
    """The config groups whose technique runs in this job (``prune`` is absent at ``prune.ratio=0``)."""
    return [group for group, _, _ in _selected(cfg)]


def configured(cfg: Mapping[str, Any]) -> list[Technique]:
    """The techniques the job config asks for, in pipeline order."""
    out = []
    for group, method, cls in _selected(cfg):
        if cls is None:
            raise KeyError(f"{group}.method={method!r}: must be one of {methods(group)}")
        out.append(cls(cfg[group]))
    return out


def check_config(cfg: Mapping[str, Any]) -> list[str]:
    """Unknown methods, then each configured technique's own checks."""
    problems: list[str] = []
    for group, method, cls in _selected(cfg):
        if cls is None:
            problems.append(f"{group}.method={method!r}: must be one of {methods(group)}")
        else:
            problems += cls.check(cfg)
    return problems
