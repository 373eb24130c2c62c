"""Weight pruning for the NCF family: unstructured magnitude masks and structured removal of whole units.

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
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from recsys.models import build_model

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
    """Structured: zero whole units (GMF factors, MLP embedding dims, MLP neurons) of lowest group L1/L2 norm."""

    ratio: float
    targets: str = "all"
    norm: str = "l2"


@dataclass
class UnitGroup:
    """Units pruned together: ``producers`` (param key, dim) are masked; ``consumers`` (key, dim, offset) read them."""

    name: str
    kind: str                                   # "embeddings" or "mlp" (which prune.targets select it)
    n: int
    producers: list[tuple[str, int]]
    consumers: list[tuple[str, int, int]]


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
# Written by hand rather than with torch-pruning's DependencyGraph: the couplings are recommender-specific — GMF's
# user and item tables are multiplied element-wise (a factor is removed from both), MLP's first Linear reads [p_u; q_i]
# whose halves must stay equal for the NCF spec (mlp_layers[0] = 2 x embedding size), and NeuMF's output layer reads
# [gmf ; mlp] at an offset — and the result must be rebuilt from ``config()``, not patched module by module.
def _gmf_groups(gmf: nn.Module, p: str, out_key: str, offset: int) -> list[UnitGroup]:
    return [UnitGroup(f"{p}factors", "embeddings", gmf.factors,
                      [(f"{p}user_embedding.weight", 1), (f"{p}item_embedding.weight", 1)], [(out_key, 1, offset)])]


def _mlp_groups(mlp: nn.Module, p: str, out_key: str, offset: int) -> list[UnitGroup]:
    lins = [f"{p}tower.{i}" for i, m in enumerate(mlp.tower) if isinstance(m, nn.Linear)]
    emb = mlp.layers[0] // 2
    first = f"{lins[0]}.weight" if lins else out_key
    base = 0 if lins else offset
    groups = [UnitGroup(f"{p}user_dims", "embeddings", emb, [(f"{p}user_embedding.weight", 1)], [(first, 1, base)]),
              UnitGroup(f"{p}item_dims", "embeddings", emb, [(f"{p}item_embedding.weight", 1)],
                        [(first, 1, base + emb)])]
    for i, lin in enumerate(lins):
        nxt = [(f"{lins[i + 1]}.weight", 1, 0)] if i + 1 < len(lins) else [(out_key, 1, offset)]
        groups.append(UnitGroup(f"{lin}", "mlp", mlp.layers[i + 1], [(f"{lin}.weight", 0), (f"{lin}.bias", 0)], nxt))
    return groups


def unit_groups(model: nn.Module) -> list[UnitGroup]:
    """The prunable unit groups of a GMF, MLP or NeuMF model."""
    name = type(model).__name__
    if name == "NeuMF":
        return _gmf_groups(model.gmf, "gmf.", "predict.weight", 0) + \
            _mlp_groups(model.mlp, "mlp.", "predict.weight", model.gmf.factors)
    if name == "GMF":
        return _gmf_groups(model, "", "predict.weight", 0)
    if name == "MLP":
        return _mlp_groups(model, "", "predict.weight", 0)
    raise ValueError(f"structured pruning supports the NCF models (GMF, MLP, NeuMF), not {name}")


def _unit_norms(model: nn.Module, g: UnitGroup, norm: str) -> torch.Tensor:
    """Group norm per unit: L1 (sum |w|) or L2 (sqrt of sum w^2) over every producer and consumer slice."""
    total = torch.zeros(g.n)
    for key, dim, off in [(k, d, 0) for k, d in g.producers] + g.consumers:
        t = effective(model, key).narrow(dim, off, g.n)
        t = t.movedim(dim, 0).reshape(g.n, -1)
        total += t.abs().sum(1) if norm == "l1" else t.pow(2).sum(1)
    total = total if norm == "l1" else total.sqrt()
    mask = current_mask(model, g.producers[0][0])
    if mask is not None:   # units removed earlier rank lowest, so a gradual schedule only ever adds to them
        alive = mask.movedim(g.producers[0][1], 0).reshape(g.n, -1).abs().sum(1) > 0
        total = torch.where(alive, total, torch.full_like(total, -1.0))
    return total


def structured_masks(model: nn.Module, cfg: StructuredPruning) -> dict[str, torch.Tensor]:
    """Masks zeroing exactly round(ratio * n) units of every targeted group (producer rows/columns and biases)."""
    masks: dict[str, torch.Tensor] = {}
    for g in unit_groups(model):
        if cfg.targets not in ("all", g.kind):
            continue
        k = n_removed(cfg.ratio, g.n)
        if k >= g.n:
            raise ValueError(f"prune.ratio={cfg.ratio} would remove all {g.n} units of {g.name}")
        keep = _lowest(_unit_norms(model, g, cfg.norm), k)
        for key, dim in g.producers:
            shape = [1] * effective(model, key).dim()
            shape[dim] = g.n
            masks[key] = keep.view(shape).expand_as(effective(model, key)).clone()
    return masks


def kept_units(model: nn.Module) -> dict[str, torch.Tensor]:
    """Indices of the units of each group that are not entirely zero (what ``shrink`` keeps)."""
    out = {}
    for g in unit_groups(model):
        alive = torch.zeros(g.n, dtype=torch.bool)
        for key, dim in g.producers:
            alive |= effective(model, key).movedim(dim, 0).reshape(g.n, -1).abs().sum(1) > 0
        out[g.name] = torch.nonzero(alive).flatten()
    # the NCF spec needs equal MLP user/item embedding sizes: keep the strongest of the larger side's extras
    for p in {n[: -len("user_dims")] for n in out if n.endswith("user_dims")}:
        u, i = out[f"{p}user_dims"], out[f"{p}item_dims"]
        if len(u) != len(i):
            n = max(len(u), len(i))
            g = {x.name: x for x in unit_groups(model)}
            for side in ("user_dims", "item_dims"):
                norms = _unit_norms(model, g[p + side], "l2")
                out[p + side] = torch.sort(torch.argsort(norms, descending=True, stable=True)[:n]).values
    return out


def shrink(model: nn.Module, keep: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A physically smaller copy of ``model`` holding only the ``keep`` units (default: the non-zero ones)."""
    keep = keep if keep is not None else kept_units(model)
    groups = {g.name: g for g in unit_groups(model)}
    index: dict[tuple[str, int], list[tuple[int, torch.Tensor]]] = {}
    for name, g in groups.items():
        idx = keep.get(name, torch.arange(g.n))
        if len(idx) == 0:
            raise ValueError(f"shrink would leave {name} empty")
        for key, dim in g.producers:
            index.setdefault((key, dim), []).append((0, idx))
        for key, dim, off in g.consumers:
            index.setdefault((key, dim), []).append((off, idx + off))
    spec = dict(model.config())
    n_keep = {n: len(keep.get(n, torch.arange(g.n))) for n, g in groups.items()}
    if type(model).__name__ in ("NeuMF", "GMF"):
        spec["factors"] = n_keep[("gmf." if "mlp_layers" in spec else "") + "factors"]
    if type(model).__name__ in ("NeuMF", "MLP"):
        p, lkey = ("mlp.", "mlp_layers") if "mlp_layers" in spec else ("", "layers")
        if n_keep[f"{p}user_dims"] != n_keep[f"{p}item_dims"]:
            raise ValueError("MLP user and item embeddings must keep the same number of dimensions")
        hidden = [groups[n] for n in groups if n.startswith(f"{p}tower.")]
        spec[lkey] = [2 * n_keep[f"{p}user_dims"]] + [n_keep[g.name] for g in hidden]
    small = build_model(spec)
    state = {}
    for key in small.state_dict():
        t = effective(model, key)
        for dim in range(t.dim()):
            segs = sorted(index.get((key, dim), []), key=lambda s: s[0])
            if segs:
                # in NCF models the groups touching a dim partition it (e.g. predict's [gmf ; mlp] columns)
                t = t.index_select(dim, torch.cat([s[1] for s in segs]))
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
