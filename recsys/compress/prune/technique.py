"""The pruning techniques the pipeline runs (``prune.method=magnitude|structured``): config checks, masks before the
fine-tune stage, the schedule callback during it, and strip/shrink + artifact choice after it. The pruning itself is
the pure functions of ``recsys.compress.prune``."""
from __future__ import annotations

from typing import Any

from torch import nn

from recsys.compress.base import CompressContext, Technique, register
from recsys.compress.prune import api as P
from recsys.compress.prune.callback import PruningCallback
from recsys.models import model_class
from recsys.models.base import structured_support


class MaskAtRatio:
    """``(model, ratio)`` -> masks ``model`` to exactly ``ratio`` with this spec's method/scope/targets.

    A module-level class, not a lambda: callbacks travel to DDP's spawned ranks by pickle."""

    def __init__(self, spec: P.MagnitudePruning | P.StructuredPruning) -> None:
        self.spec = spec

    def __call__(self, model: nn.Module, ratio: float) -> Any:
        return P.prune_(model, P.at_ratio(self.spec, ratio))


class _Prune(Technique):
    group = "prune"
    label = "pruned"

    @classmethod
    def check(cls, cfg: dict[str, Any]) -> list[str]:
        p, ft = cfg.get("prune", {}), cfg.get("finetune") or {}
        errs: list[str] = []
        r = p.get("ratio")
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
            errs.append(f"prune.ratio={r!r}: must be a number in [0, 1) (the final fraction of targeted weights removed)")
        if p.get("targets", "all") not in P.TARGETS:
            errs.append(f"prune.targets={p.get('targets')!r}: must be one of {list(P.TARGETS)}")
        sched = p.get("schedule", "oneshot")
        if sched not in P.SCHEDULES:
            errs.append(f"prune.schedule={sched!r}: must be one of {list(P.SCHEDULES)}")
        if sched == "gradual":
            if not int(ft.get("epochs", 0) or 0) > 0:
                errs.append(f"prune.schedule=gradual needs fine-tune steps: finetune.epochs={ft.get('epochs')!r} "
                            "must be > 0")
            if ft.get("select_best"):
                errs.append("prune.schedule=gradual with finetune.select_best=true could keep an epoch before the "
                            "final ratio: set finetune.select_best=false")
            hi = r if isinstance(r, (int, float)) else 1.0
            for key, ok, allowed in (("initial_ratio", lambda v: 0.0 <= v <= hi, "in [0, prune.ratio]"),
                                     ("end_fraction", lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
                                     ("frequency", lambda v: isinstance(v, int) and v > 0, "a positive integer")):
                v = p.get(key, {"initial_ratio": 0.0, "end_fraction": 0.75, "frequency": 10}[key])
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
                    errs.append(f"prune.{key}={v!r}: must be {allowed}")
        return errs

    @classmethod
    def is_noop(cls, group_cfg: dict[str, Any]) -> bool:
        r = group_cfg.get("ratio")
        return not isinstance(r, bool) and isinstance(r, (int, float)) and r == 0

    def apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        self.spec = P.spec_from(self.cfg)
        gradual = self.cfg.get("schedule", "oneshot") == "gradual"
        start = float(self.cfg.get("initial_ratio", 0.0)) if gradual else self.spec.ratio
        ctx.metrics.update({f"prune_{k}": v for k, v in P.prune_(model, P.at_ratio(self.spec, start)).items()})
        ctx.params.update({"prune_method": self.method, "prune_schedule": self.cfg.get("schedule", "oneshot")})
        return model

    def callbacks(self, ctx: CompressContext) -> list[Any]:
        return [PruningCallback(MaskAtRatio(self.spec), self.spec.ratio,
                                self.cfg.get("schedule", "oneshot"), float(self.cfg.get("initial_ratio", 0.0)),
                                float(self.cfg.get("end_fraction", 0.75)), int(self.cfg.get("frequency", 10)))]


@register
class MagnitudePrune(_Prune):
    """``prune.method=magnitude``: unstructured masks; shipped sparse when that is smaller than dense."""

    method = "magnitude"

    @classmethod
    def check(cls, cfg: dict[str, Any]) -> list[str]:
        scope = cfg.get("prune", {}).get("scope", "global")
        extra = [] if scope in P.SCOPES else [f"prune.scope={scope!r}: must be one of {list(P.SCOPES)}"]
        return super().check(cfg) + extra

    ships_sparse = True   # shipped sparse when that encoding is smaller (recsys.export.formats)

    def finalize(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        keys = P.magnitude_targets(model, self.spec.targets)
        P.strip_(model)
        ctx.metrics["prune_target_sparsity"] = P.sparsity(model, keys)
        return model


@register
class StructuredPrune(_Prune):
    """``prune.method=structured``: whole units removed; ships as a smaller dense model."""

    method = "structured"

    @classmethod
    def check(cls, cfg: dict[str, Any]) -> list[str]:
        p = cfg.get("prune", {})
        errs = super().check(cfg)
        if p.get("norm", "l2") not in P.NORMS:
            errs.append(f"prune.norm={p.get('norm')!r}: must be one of {list(P.NORMS)}")
        r, targets, model_cfg = p.get("ratio"), p.get("targets", "all"), cfg.get("model", {})
        cls_ = model_class(model_cfg)
        if cls_ is not None and not structured_support(cls_):
            errs.append(f"prune.method=structured: model {cls_.__name__} (model._target_) does not declare its unit "
                        "groups (unit_groups / resized / unit_counts, recsys/models/base.py), so it cannot be pruned "
                        "structurally; use prune=magnitude")
            return errs
        if cls_ is not None and hasattr(cls_, "structured_problems"):
            errs += cls_.structured_problems(model_cfg, targets)
        if cls_ is not None and isinstance(r, (int, float)) and 0.0 <= r < 1.0:
            for name, (kind, n) in cls_.unit_counts(model_cfg).items():
                if targets in ("all", kind) and P.n_removed(r, n) >= n:
                    errs.append(f"prune.ratio={r} with prune.method=structured would leave {name} empty "
                                f"(removes {P.n_removed(r, n)} of {n} units): use a smaller ratio or a larger layer")
        return errs

    def apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        model = super().apply(model, ctx)
        return model if self.cfg.get("schedule", "oneshot") == "gradual" else P.shrink(P.strip_(model))

    def callbacks(self, ctx: CompressContext) -> list[Any]:
        return super().callbacks(ctx) if self.cfg.get("schedule", "oneshot") == "gradual" else []

    def finalize(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        if P.mask_state(model):
            model = P.shrink(P.strip_(model))
        spec = model.config()
        sizes = [(f"pruned_{k}", spec.get(k)) for k in ("factors", "embed_dim", "hidden_size", "embedding")]
        layers = spec.get("mlp_layers", spec.get("layers"))
        if isinstance(layers, list) and layers:
            sizes.append(("pruned_mlp_width", layers[0]))
        ctx.metrics.update({k: float(v) for k, v in sizes if isinstance(v, int) and v > 0})
        return model
