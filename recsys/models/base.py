"""The model contract: what the pipeline, the task families and every compression technique may ask a model.

RecBole-style: a model is one file in ``recsys/models/`` plus one YAML in ``conf/model/``; nothing in ``compress/``,
``export/`` or ``tasks/`` names a model class. A model is a plain ``nn.Module`` (no Lightning, no MLflow) with:

* ``family`` — the task family that trains and evaluates it (``"ncf"``, ``"ctr"``, ``"session"``);
* ``config()`` — constructor kwargs plus ``_target_`` (``build_model(model.config())`` rebuilds it; artifacts use it);
* ``score(*inputs)`` — the serving call the family measures (ranking/ctr: ``(users, items) -> logits``);
* ``score_all(users)`` — full-catalogue scores (ranking/ctr models; session models use ``item_scores``);
* structured pruning: ``unit_groups()`` (which parameter slices form one removable unit), ``resized(n_keep)`` (the
  config of the smaller model keeping ``n_keep[group]`` units) and the classmethod ``unit_counts(model_cfg)`` (units
  per group from a config alone, so bad ratios are refused before training);
* quantization: ``QUANT_KINDS`` (which ``quant.targets`` kinds it has modules of, for config checks); the quantizer
  itself finds modules by type and refuses a model holding weights it cannot quantize (e.g. nn.MultiheadAttention);
* optionally ``structured_problems(model_cfg, targets)`` (classmethod): config combinations it cannot prune;
* distillation: ``STUDENT_KEYS`` (the config keys a student may shrink) and ``STUDENT_ALIASES`` (other spellings).

Session models (``family = "session"``) additionally implement ``SessionModel``: a per-session *state* advanced one
click at a time. GRU4Rec's state is its GRU hidden tensor; an attention model's state can be the padded window of the
session's last clicks. The session family, its evaluation, its latency figures and the distillation teacher only use
these methods, so a new session model (e.g. SASRec) needs no edit outside its own file and config.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch.nn import functional as F

Slice = tuple[str, int, tuple[int, ...]]   # (param key, dim, offsets): unit u owns index offset + u for every offset


def unit_slice(key: str, dim: int, *offsets: int) -> Slice:
    """The slice of parameter ``key`` along ``dim`` that a group's units own (at each offset; default offset 0)."""
    return key, dim, offsets or (0,)


@dataclass
class UnitGroup:
    """Units pruned together: ``producers`` slices are masked; ``consumers`` slices read them (both cut by shrink)."""

    name: str
    kind: str                                   # "embeddings" or "mlp" (which prune.targets select it)
    n: int
    producers: list[Slice]
    consumers: list[Slice]
    tie: str | None = None                      # groups with the same tie keep equal counts (one config size)


@runtime_checkable
class Recommender(Protocol):
    """Every model: its family, its rebuildable config and its serving score."""

    family: ClassVar[str]

    def config(self) -> dict[str, Any]: ...

    def score(self, *inputs: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Prunable(Protocol):
    """A model that structured pruning can shrink: its unit groups and the config of a model with fewer units."""

    def unit_groups(self) -> list[UnitGroup]: ...

    def resized(self, n_keep: dict[str, int]) -> dict[str, Any]: ...

    @classmethod
    def unit_counts(cls, model_cfg: dict[str, Any]) -> dict[str, tuple[str, int]]: ...


@runtime_checkable
class SessionModel(Protocol):
    """Next-item models of the session family: a state per session, advanced one click at a time.

    ``init_state(b, device)``: the state of ``b`` fresh sessions. ``advance(items, state) -> (h, state)``: one click
    per session; ``h`` (b, d) is what ``item_scores(h, items=None)`` scores (all items when ``items`` is None).
    ``reset_state(state, reset)``: a state detached from the graph with fresh sessions where ``reset`` (b,) is true.
    ``keep_state(new, old, live)``: ``new`` where ``live`` (b,) is true, else ``old`` (padded evaluation).
    ``serving_state(b, generator)``: a realistic stored state for latency requests (random when a generator is given).
    ``score_next(items, state) -> (scores over all items, state)``: the serving request.
    """

    n_items: int

    def init_state(self, batch: int, device: torch.device | str = "cpu") -> Any: ...

    def advance(self, items: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...

    def item_scores(self, h: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor: ...

    def reset_state(self, state: Any, reset: torch.Tensor) -> Any: ...

    def keep_state(self, new: Any, old: Any, live: torch.Tensor) -> Any: ...

    def serving_state(self, batch: int, generator: torch.Generator | None = None) -> Any: ...

    def score_next(self, items: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...


def global_hooks() -> bool:
    """Whether a global module hook (forward or backward) is registered: it runs on every module call."""
    g = torch.nn.modules.module
    return bool(g._global_forward_pre_hooks or g._global_forward_hooks or g._global_backward_hooks or
                g._global_backward_pre_hooks)


def own_hooks(m: torch.nn.Module) -> bool:
    return bool(m._forward_pre_hooks or m._forward_hooks or m._backward_hooks or m._backward_pre_hooks)


def plain_params(*mods: torch.nn.Module) -> bool:
    """Whether none of ``mods`` has a hook of its own and each parameter it holds directly is a trainable float32
    ``nn.Parameter`` leaf (not a pruning re-parametrisation, a frozen or a low-precision one): what the models'
    hand-written training steps (``NeuMF.bce_gradients``, ``GRU4Rec.xe_gradients``) require of the modules they read."""
    return not any(own_hooks(m) or any(type(p) is not torch.nn.Parameter or not p.requires_grad or p.dtype != torch.float32
                                        for p in m._parameters.values()) for m in mods)


def structured_support(model: Any) -> bool:
    """Whether ``model`` (an instance or a class) implements the structured-pruning part of the contract."""
    return all(callable(getattr(model, m, None)) for m in ("unit_groups", "resized", "unit_counts"))


def sampled_loss(model: SessionModel, h: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor, loss: str = "cross-entropy",
                 bpreg: float = 0.0, logq: float = 0.0, log_pop: torch.Tensor | None = None,
                 offsets: torch.Tensor | None = None, mask_duplicates: bool = True,
                 sum_over: int | None = None, scores: torch.Tensor | None = None, xe_eps: float = 0.0) -> torch.Tensor:
    """GRU4Rec's training loss on one session-parallel step (any SessionModel: it only calls ``item_scores``).

    Candidates = the minibatch's own targets (each row's target is the diagonal; the other rows' targets are its
    in-batch negatives, i.e. popularity-sampled) followed by ``negatives`` (extra shared samples). Candidates equal to a
    row's target are masked out as negatives.

    * ``cross-entropy``: softmax over the candidates; ``logq`` > 0 subtracts ``logq * log(popularity)`` from each
      candidate's score (the sampled-softmax correction for popularity-sampled negatives).
    * ``bpr-max``: -log sum_j softmax(s_j) sigmoid(s_i - s_j) over the negatives j, plus ``bpreg`` * sum_j softmax(s_j) s_j^2.

    Official-GRU4Rec switches (cross-entropy): ``offsets`` (b + n_sample,) replaces the logQ term with a given additive
    offset per candidate; ``mask_duplicates=False`` keeps copies of the target among the negatives; ``sum_over=n``
    returns sum / n (a fixed batch size) instead of the mean over the rows present; ``xe_eps`` > 0 makes each row's loss
    ``-log(p_target + xe_eps)`` (the official ``+1e-24``): a row whose target probability falls far below ``xe_eps``
    then gives almost no gradient, where the exact ``-log p`` gives its largest. ``scores``: the candidates' scores
    when the caller already has them (a fused training step, ``GRU4Rec.train_scores``).
    """
    cand = torch.cat([targets, negatives])
    if scores is None:
        scores = model.item_scores(h, cand)                                # (b, b + n_sample)
    b = len(targets)
    if loss == "cross-entropy":
        if offsets is not None:
            scores = scores + offsets
        elif logq > 0 and log_pop is not None:
            scores = scores - logq * log_pop[cand]
        if mask_duplicates:                                                # duplicates of the target: not negatives
            neg_mask = cand[None, :] == targets[:, None]
            neg_mask[torch.arange(b), torch.arange(b)] = False
            scores = scores.masked_fill(neg_mask, float("-inf"))
        rows = torch.arange(b, device=scores.device)
        if xe_eps > 0:   # -log(exp(log p) + eps), computed stably from log p; gradient sigmoid(log p - log eps)
            per_row = -torch.logaddexp(-F.cross_entropy(scores, rows, reduction="none"),
                                       torch.tensor(math.log(xe_eps), dtype=scores.dtype, device=scores.device))
            return per_row.sum() / sum_over if sum_over is not None else per_row.mean()
        if sum_over is not None:
            return F.cross_entropy(scores, rows, reduction="sum") / sum_over
        return F.cross_entropy(scores, rows)
    if loss == "bpr-max":
        pos = scores[torch.arange(b), torch.arange(b)][:, None]
        not_neg = cand[None, :] == targets[:, None]                        # target itself and its duplicates
        weights = torch.softmax(scores.masked_fill(not_neg, float("-inf")), dim=1)
        term = (weights * torch.sigmoid(pos - scores)).masked_fill(not_neg, 0.0).sum(1)
        reg = (weights * scores * scores).masked_fill(not_neg, 0.0).sum(1)
        return (-torch.log(term + 1e-24) + bpreg * reg).mean()
    raise ValueError(f"model.loss={loss!r}: must be one of ['cross-entropy', 'bpr-max']")


LOSSES: tuple[str, ...] = ("cross-entropy", "bpr-max")
