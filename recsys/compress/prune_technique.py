"""The pruning techniques the pipeline runs (``prune.method=magnitude|structured``): config checks, masks before the
fine-tune stage, the schedule callback during it, and strip/shrink + artifact choice after it. The pruning itself is
the pure functions of ``recsys.compress.prune``."""
from __future__ import annotations

from typing import Any

from torch import nn

from recsys.compress.base import CompressContext, Technique, register
from recsys.compress.prune import (
    NORMS,
    SCHEDULES,
    SCOPES,
    STRUCTURED_MODELS,
    TARGETS,
    at_ratio,
    magnitude_targets,
    mask_state,
    n_removed,
    prune_,
    shrink,
    sparsity,
    spec_from,
    strip_,
)


def _model_class(model_cfg: dict[str, Any]) -> str:
    """The model's class name from ``model._target_`` (or ``model.name`` in hand-written configs)."""
    target = str(model_cfg.get("_target_") or "").rpartition(".")[2]
    return target or {"gmf": "GMF", "mlp": "MLP", "neumf": "NeuMF", "deepfm": "DeepFM",
                      "gru4rec": "GRU4Rec"}.get(str(model_cfg.get("name", "")).lower(), "")


def _ints(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def _unit_counts(model_cfg: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """Units per group from the model config alone (for checks before any model exists)."""
    out: dict[str, tuple[str, int]] = {}
    cls = _model_class(model_cfg)
    if cls == "DeepFM":
        if isinstance(model_cfg.get("embed_dim"), int):
            out[f"the field embedding dims (model.embed_dim={model_cfg['embed_dim']})"] = ("embeddings",
                                                                                         model_cfg["embed_dim"])
        if _ints(model_cfg.get("mlp_layers")):
            for i, n in enumerate(model_cfg["mlp_layers"]):
                out[f"MLP layer {i} (model.mlp_layers[{i}]={n})"] = ("mlp", n)
        return out
    if cls == "GRU4Rec":
        h, emb = model_cfg.get("hidden_size"), model_cfg.get("embedding", 0)
        if not model_cfg.get("constrained_embedding", True) and isinstance(emb, int) and isinstance(emb or h, int):
            width = f"model.embedding={emb}" if emb else f"model.embedding=0, so model.hidden_size={h}"
            out[f"the input embedding dims ({width})"] = ("embeddings", emb or h)
        if isinstance(h, int):
            out[f"the GRU hidden units (model.hidden_size={h})"] = ("mlp", h)
        return out
    if isinstance(model_cfg.get("factors"), int):
        out["factors (model.factors)"] = ("embeddings", model_cfg["factors"])
    layers = model_cfg.get("mlp_layers", model_cfg.get("layers"))
    if isinstance(layers, (list, tuple)) and layers and _ints(layers):
        out["MLP embedding dims (model.mlp_layers[0] / 2)"] = ("embeddings", layers[0] // 2)
        for i, n in enumerate(layers[1:], 1):
            out[f"MLP layer {i} (model.mlp_layers[{i}]={n})"] = ("mlp", n)
    return out


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
        if p.get("targets", "all") not in TARGETS:
            errs.append(f"prune.targets={p.get('targets')!r}: must be one of {list(TARGETS)}")
        sched = p.get("schedule", "oneshot")
        if sched not in SCHEDULES:
            errs.append(f"prune.schedule={sched!r}: must be one of {list(SCHEDULES)}")
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

    def apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        self.spec = spec_from(self.cfg)
        gradual = self.cfg.get("schedule", "oneshot") == "gradual"
        start = float(self.cfg.get("initial_ratio", 0.0)) if gradual else self.spec.ratio
        ctx.metrics.update({f"prune_{k}": v for k, v in prune_(model, at_ratio(self.spec, start)).items()})
        ctx.params.update({"prune_method": self.method, "prune_schedule": self.cfg.get("schedule", "oneshot")})
        return model

    def callbacks(self, ctx: CompressContext) -> list[Any]:
        from recsys.compress.prune_callback import PruningCallback

        return [PruningCallback(lambda m, r: prune_(m, at_ratio(self.spec, r)), self.spec.ratio,
                                self.cfg.get("schedule", "oneshot"), float(self.cfg.get("initial_ratio", 0.0)),
                                float(self.cfg.get("end_fraction", 0.75)), int(self.cfg.get("frequency", 10)))]


@register
class MagnitudePrune(_Prune):
    """``prune.method=magnitude``: unstructured masks; shipped sparse when that is smaller than dense."""

    method = "magnitude"

    @classmethod
    def check(cls, cfg: dict[str, Any]) -> list[str]:
        scope = cfg.get("prune", {}).get("scope", "global")
        extra = [] if scope in SCOPES else [f"prune.scope={scope!r}: must be one of {list(SCOPES)}"]
        return super().check(cfg) + extra

    def finalize(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        from recsys.export.sparse import sparse_is_smaller  # the artifact encoding decides what "smaller" means

        keys = magnitude_targets(model, self.spec.targets)
        strip_(model)
        ctx.metrics["prune_target_sparsity"] = sparsity(model, keys)
        ctx.artifact_format = "sparse" if sparse_is_smaller(model) else "dense"
        return model


@register
class StructuredPrune(_Prune):
    """``prune.method=structured``: whole units removed; ships as a smaller dense model."""

    method = "structured"

    @classmethod
    def check(cls, cfg: dict[str, Any]) -> list[str]:
        p = cfg.get("prune", {})
        errs = super().check(cfg)
        if p.get("norm", "l2") not in NORMS:
            errs.append(f"prune.norm={p.get('norm')!r}: must be one of {list(NORMS)}")
        r, targets, model_cfg = p.get("ratio"), p.get("targets", "all"), cfg.get("model", {})
        model_cls = _model_class(model_cfg)
        if model_cls and model_cls not in STRUCTURED_MODELS:
            errs.append(f"prune.method=structured: model {model_cls} (model._target_) is not supported; it supports "
                        f"{list(STRUCTURED_MODELS)}")
        if model_cls == "GRU4Rec" and targets == "embeddings" and model_cfg.get("constrained_embedding", True):
            errs.append("prune.targets='embeddings' with model=gru4rec and model.constrained_embedding=true: the item "
                        "table is the output layer, tied to the GRU hidden units, so there are no separate embedding "
                        "dims; use prune.targets=mlp or all (GRU hidden units), or model.constrained_embedding=false")
        if isinstance(r, (int, float)) and 0.0 <= r < 1.0:
            for name, (kind, n) in _unit_counts(model_cfg).items():
                if targets in ("all", kind) and n_removed(r, n) >= n:
                    errs.append(f"prune.ratio={r} with prune.method=structured would leave {name} empty "
                                f"(removes {n_removed(r, n)} of {n} units): use a smaller ratio or a larger layer")
        return errs

    def apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        model = super().apply(model, ctx)
        return model if self.cfg.get("schedule", "oneshot") == "gradual" else shrink(strip_(model))

    def callbacks(self, ctx: CompressContext) -> list[Any]:
        return super().callbacks(ctx) if self.cfg.get("schedule", "oneshot") == "gradual" else []

    def finalize(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        if mask_state(model):
            model = shrink(strip_(model))
        spec = model.config()
        sizes = [(f"pruned_{k}", spec.get(k)) for k in ("factors", "embed_dim", "hidden_size", "embedding")]
        layers = spec.get("mlp_layers", spec.get("layers"))
        if isinstance(layers, list) and layers:
            sizes.append(("pruned_mlp_width", layers[0]))
        ctx.metrics.update({k: float(v) for k, v in sizes if isinstance(v, int) and v > 0})
        ctx.artifact_format = "dense"
        return model
