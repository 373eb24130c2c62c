"""Weight pruning: unstructured magnitude masks and structured removal of whole units (any model that declares them).

Two separate steps, with separate names (NNI's split): ``prune_`` *masks* weights in place (torch.nn.utils.prune's
reparametrisation ``weight = weight_orig * weight_mask``), which changes neither bytes nor speed; ``shrink`` *removes*
masked units and returns a physically smaller dense model whose ``config()`` rebuilds the smaller shapes.

    prune_(model, MagnitudePruning(ratio=0.4, scope="global", targets="all"))
    prune_(model, StructuredPruning(ratio=0.5, targets="all", norm="l2")); small = shrink(strip_(model))

``ratio`` is always the final fraction of targeted weights (or units) removed, counted against the *original* tensors:
masks are recomputed from scratch at each call with already-masked entries ranked lowest, so calls never compound
(unlike ``torch.nn.utils.prune``'s ``amount``, which applies to what is left). Counts are exact: round(ratio * n).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from recsys.models import build_model
from recsys.models.base import UnitGroup, structured_support

TARGETS = ("embeddings", "mlp", "all")
SCOPES = ("global", "layer")
SCHEDULES = ("oneshot", "gradual")
NORMS = ("l1", "l2")


@dataclass
class MagnitudePruning:
    """Unstructured: zero the smallest-|w| fraction ``ratio`` of targeted weights (one global pool, or per tensor)."""

    ratio: float
    scope: str = "global"
    targets: str = "all"


@dataclass
class StructuredPruning:
    """Structured: zero whole units (embedding dimensions, MLP neurons, GRU hidden units) of lowest group L1/L2 norm."""

    ratio: float
    targets: str = "all"
    norm: str = "l2"


def n_removed(ratio: float, n: int) -> int:
    """Exact count of units removed from ``n`` at ``ratio`` (round half up, float noise ignored)."""
    return int(math.floor(ratio * n + 0.5 + 1e-9))


def cubic_sparsity(step: int, total_steps: int, final: float, initial: float = 0.0, end_fraction: float = 1.0,
                   frequency: int = 1) -> float:
    """Zhu & Gupta (2017) schedule: s_t = s_f + (s_i - s_f)(1 - t/T)^3, updated every ``frequency`` steps, T = end."""
    end = max(1, int(round(total_steps * end_fraction)))
    t = min((step // max(1, frequency)) * max(1, frequency), end)
    return final + (initial - final) * (1.0 - t / end) ** 3


# ------------------------------------------------------------------------------------------------ masks on tensors
def _split(key: str) -> tuple[str, str]:
    mod, _, name = key.rpartition(".")
    return mod, name


def effective(model: nn.Module, key: str) -> torch.Tensor:
    """The tensor the forward pass uses for ``module.param`` (``orig * mask`` while a mask is installed)."""
    mod, name = _split(key)
    m = model.get_submodule(mod)
    if hasattr(m, f"{name}_mask"):
        return (getattr(m, f"{name}_orig") * getattr(m, f"{name}_mask")).detach()
    return getattr(m, name).detach()


def current_mask(model: nn.Module, key: str) -> torch.Tensor | None:
    mod, name = _split(key)
    return getattr(model.get_submodule(mod), f"{name}_mask", None)


def apply_masks_(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Install (first call) or overwrite (later calls) the masks ``{"module.param": 0/1 tensor}`` in place."""
    for key, mask in masks.items():
        mod, name = _split(key)
        m = model.get_submodule(mod)
        mask = mask.to(dtype=getattr(m, name).dtype if not hasattr(m, f"{name}_mask") else getattr(m, f"{name}_mask").dtype)
        if hasattr(m, f"{name}_mask"):
            getattr(m, f"{name}_mask").copy_(mask)
        else:
            tprune.custom_from_mask(m, name, mask)
        with torch.no_grad():
            orig = getattr(m, f"{name}_orig")
            orig.mul_(getattr(m, f"{name}_mask"))           # masked weights stay exactly zero underneath too
            setattr(m, name, orig * getattr(m, f"{name}_mask"))  # fresh for code that reads .weight without forward()
    return model


def masked_params(model: nn.Module) -> Iterator[tuple[nn.Module, str, torch.Tensor]]:
    """``(module, parameter name, mask)`` of every installed mask."""
    for key, mask in model.named_buffers():
        if key.endswith("_mask"):
            mod, name = _split(key[: -len("_mask")])
            yield model.get_submodule(mod), name, mask


def mask_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every installed mask, keyed ``module.param`` (what a checkpoint must restore)."""
    return {n[: -len("_mask")]: b.detach().clone() for n, b in model.named_buffers() if n.endswith("_mask")}


def strip_(model: nn.Module) -> nn.Module:
    """Make masks permanent: remove the reparametrisation, leaving plain parameters with zeros."""
    for key in list(mask_state(model)):
        mod, name = _split(key)
        tprune.remove(model.get_submodule(mod), name)
    return model


# ----------------------------------------------------------------------------------------------------- magnitude
def magnitude_targets(model: nn.Module, targets: str) -> list[str]:
    """Keys of the weight matrices ``targets`` selects: embedding tables and/or Linear weights (biases never)."""
    kinds = {"embeddings": (nn.Embedding,), "mlp": (nn.Linear,), "all": (nn.Embedding, nn.Linear)}[targets]
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, kinds)]


def _scores(model: nn.Module, key: str) -> torch.Tensor:
    """|w| with already-masked entries ranked below everything, so a larger ratio keeps every earlier zero."""
    mod, name = _split(key)
    m = model.get_submodule(mod)
    mask = getattr(m, f"{name}_mask", None)
    w = (getattr(m, f"{name}_orig") if mask is not None else getattr(m, name)).detach().abs()
    return w if mask is None else torch.where(mask.bool(), w, torch.full_like(w, -1.0))


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """0/1 mask with exactly the ``k`` lowest scores zeroed (stable order, so ties are deterministic)."""
    mask = torch.ones(scores.numel(), dtype=scores.dtype)
    if k > 0:
        mask[torch.argsort(scores.flatten(), stable=True)[:k]] = 0
    return mask.view_as(scores)


def magnitude_masks(model: nn.Module, cfg: MagnitudePruning) -> dict[str, torch.Tensor]:
    """Masks removing exactly round(ratio * n) targeted weights: over one global pool or per tensor."""
    keys = magnitude_targets(model, cfg.targets)
    scores = {k: _scores(model, k) for k in keys}
    if cfg.scope == "layer":
        return {k: _lowest(s, n_removed(cfg.ratio, s.numel())) for k, s in scores.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    mask = _lowest(flat, n_removed(cfg.ratio, flat.numel()))
    out, at = {}, 0
    for k, s in scores.items():
        out[k] = mask[at:at + s.numel()].view_as(s)
        at += s.numel()
    return out


# ---------------------------------------------------------------------------------------------------- structured
# The unit groups (which slices of which parameters form one removable unit) are the model's own knowledge:
# ``model.unit_groups()`` / ``model.resized(n_keep)`` (recsys/models/base.py); this module only ranks and cuts them.
def _prunable(model: nn.Module) -> nn.Module:
    if not structured_support(model):
        raise ValueError(f"prune.method=structured: {type(model).__name__} does not implement unit_groups() / "
                         "resized() / unit_counts() (recsys/models/base.py), so it cannot be pruned structurally")
    return model


def unit_groups(model: nn.Module) -> list[UnitGroup]:
    """The prunable unit groups the model declares."""
    return _prunable(model).unit_groups()


def _per_unit(t: torch.Tensor, n: int, dim: int, offsets: tuple[int, ...]) -> torch.Tensor:
    """(n, -1): the entries of ``t`` that belong to each unit (the slices at ``offsets`` along ``dim``)."""
    return torch.cat([t.narrow(dim, o, n).movedim(dim, 0).reshape(n, -1) for o in offsets], 1)


def _unit_norms(model: nn.Module, g: UnitGroup, norm: str) -> torch.Tensor:
    """Group norm per unit: L1 (sum |w|) or L2 (sqrt of sum w^2) over every producer and consumer slice."""
    total = torch.zeros(g.n)
    for key, dim, offs in g.producers + g.consumers:
        t = _per_unit(effective(model, key), g.n, dim, offs)
        total += t.abs().sum(1) if norm == "l1" else t.pow(2).sum(1)
    total = total if norm == "l1" else total.sqrt()
    key, dim, offs = g.producers[0]
    mask = current_mask(model, key)
    if mask is not None:   # units removed earlier rank lowest, so a gradual schedule only ever adds to them
        alive = _per_unit(mask, g.n, dim, offs).abs().sum(1) > 0
        total = torch.where(alive, total, torch.full_like(total, -1.0))
    return total


def _selected(model: nn.Module, targets: str) -> list[UnitGroup]:
    groups = [g for g in unit_groups(model) if targets in ("all", g.kind)]
    if not groups:
        kinds = sorted({g.kind for g in unit_groups(model)} | {"all"})
        raise ValueError(f"prune.targets={targets!r} selects no unit group of {type(model).__name__} "
                         f"(its groups: {[g.name for g in unit_groups(model)]}): use one of {kinds}")
    return groups


def structured_masks(model: nn.Module, cfg: StructuredPruning) -> dict[str, torch.Tensor]:
    """Masks zeroing exactly round(ratio * n) units of every targeted group (every producer slice of those units)."""
    masks: dict[str, torch.Tensor] = {}
    for g in _selected(model, cfg.targets):
        k = n_removed(cfg.ratio, g.n)
        if k >= g.n:
            raise ValueError(f"prune.ratio={cfg.ratio} would remove all {g.n} units of {g.name}: "
                             "use a ratio that leaves at least one")
        gone = torch.nonzero(_lowest(_unit_norms(model, g, cfg.norm), k) == 0).flatten()
        for key, dim, offs in g.producers:
            t = effective(model, key)
            keep = torch.ones(t.shape[dim], dtype=t.dtype)
            for o in offs:
                keep[gone + o] = 0
            shape = [1] * t.dim()
            shape[dim] = -1
            mask = keep.view(shape).expand_as(t)
            masks[key] = mask.clone() if key not in masks else masks[key] * mask
    return masks


def kept_units(model: nn.Module) -> dict[str, torch.Tensor]:
    """Indices of the units of each group that are not entirely zero (what ``shrink`` keeps)."""
    groups = unit_groups(model)
    out = {}
    for g in groups:
        alive = torch.zeros(g.n, dtype=torch.bool)
        for key, dim, offs in g.producers:
            alive |= _per_unit(effective(model, key), g.n, dim, offs).abs().sum(1) > 0
        out[g.name] = torch.nonzero(alive).flatten()
    # tied groups share one config size (NCF's MLP user/item dims, GRU layers' hidden_size): a group that kept fewer
    # units takes back its strongest removed ones, whose producers are zero, so outputs do not change
    ties: dict[str, list[UnitGroup]] = {}
    for g in groups:
        if g.tie:
            ties.setdefault(g.tie, []).append(g)
    for tied in ties.values():
        n = max(len(out[g.name]) for g in tied)
        for g in tied:
            extra = n - len(out[g.name])
            if extra > 0:
                norms = _unit_norms(model, g, "l2")
                norms[out[g.name]] = -1.0
                back = torch.argsort(norms, descending=True, stable=True)[:extra]
                out[g.name] = torch.sort(torch.cat([out[g.name], back])).values
    return out


def shrink(model: nn.Module, keep: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A physically smaller copy of ``model`` holding only the ``keep`` units (default: the non-zero ones)."""
    keep = keep if keep is not None else kept_units(model)
    groups = unit_groups(model)
    retained: dict[tuple[str, int], torch.Tensor] = {}      # (param key, dim) -> which indices survive
    n_keep: dict[str, int] = {}
    for g in groups:
        idx = keep.get(g.name, torch.arange(g.n))
        if len(idx) == 0:
            raise ValueError(f"shrink would leave {g.name} empty")
        n_keep[g.name] = len(idx)
        gone = torch.ones(g.n, dtype=torch.bool)
        gone[idx] = False
        gone = torch.nonzero(gone).flatten()
        for key, dim, offs in g.producers + g.consumers:
            r = retained.setdefault((key, dim), torch.ones(effective(model, key).shape[dim], dtype=torch.bool))
            for o in offs:
                r[gone + o] = False
    for g in groups:
        if g.tie and any(n_keep[x.name] != n_keep[g.name] for x in groups if x.tie == g.tie):
            raise ValueError(f"{[x.name for x in groups if x.tie == g.tie]} must keep the same number of units "
                             f"({g.tie} is one size)")
    small = build_model(model.resized(n_keep))
    state = {}
    for key in small.state_dict():
        t = effective(model, key)
        for dim in range(t.dim()):
            if (key, dim) in retained:
                t = t.index_select(dim, torch.nonzero(retained[(key, dim)]).flatten())
        state[key] = t.clone()
    small.load_state_dict(state)
    return small.train(model.training)


# ----------------------------------------------------------------------------------------------------- one verb
def prune_(model: nn.Module, cfg: MagnitudePruning | StructuredPruning) -> dict[str, float]:
    """Mask ``model`` in place to exactly ``cfg.ratio`` (never compounded); returns what it did."""
    if not 0.0 <= cfg.ratio < 1.0:
        raise ValueError(f"prune.ratio={cfg.ratio}: must be in [0, 1)")
    masks = magnitude_masks(model, cfg) if isinstance(cfg, MagnitudePruning) else structured_masks(model, cfg)
    apply_masks_(model, masks)
    removed = sum(int((m == 0).sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return {"target_params": float(total), "target_removed": float(removed),
            "target_sparsity": removed / max(total, 1)}


def sparsity(model: nn.Module, keys: list[str]) -> float:
    """Fraction of exact zeros over the tensors ``keys`` (effective values)."""
    ts = [effective(model, k) for k in keys]
    return sum(int((t == 0).sum()) for t in ts) / max(1, sum(t.numel() for t in ts))


def spec_from(cfg: dict[str, Any]) -> MagnitudePruning | StructuredPruning:
    """The pruning config object of a ``prune`` config group (plain dict)."""
    if cfg["method"] == "magnitude":
        return MagnitudePruning(float(cfg["ratio"]), cfg.get("scope", "global"), cfg.get("targets", "all"))
    return StructuredPruning(float(cfg["ratio"]), cfg.get("targets", "all"), cfg.get("norm", "l2"))


def at_ratio(spec: MagnitudePruning | StructuredPruning, ratio: float) -> MagnitudePruning | StructuredPruning:
    return replace(spec, ratio=float(ratio))
