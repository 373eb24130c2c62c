"""Ranking and CTR metrics as pure tensor functions.

Ties are counted pessimistically everywhere: an item scored *equal* to the target ranks above it. A model that scores
every item the same therefore gets rank n-1 (the worst), never a lucky hit; this is the convention of most
re-implementations of the NCF protocol that report on constant/degenerate models, and it makes scores reproducible.
"""
from __future__ import annotations


import torch


def rank_of_target(scores: torch.Tensor, target_scores: torch.Tensor, exclude_self: bool = True) -> torch.Tensor:
    """0-based rank of each row's target among the row's scores (ties rank above the target).

    ``scores``: (b, n) scores of all candidates; ``target_scores``: (b,) score of the target. When the target is itself
    one of the n candidates (``exclude_self``), its own tie with itself is not counted.
    """
    t = target_scores[:, None]
    higher_or_tied = (scores >= t).sum(dim=1)
    return higher_or_tied - 1 if exclude_self else higher_or_tied


def hit_rate_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """Fraction of rows whose target is in the top k."""
    return (ranks < k).float().mean()


def ndcg_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """Mean NDCG@k with one relevant item a row: 1 / log2(rank + 2) inside the top k, else 0."""
    gain = 1.0 / torch.log2(ranks.double() + 2.0)
    return torch.where(ranks < k, gain, torch.zeros_like(gain)).mean().float()


def mrr_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """Mean reciprocal rank, cut at k (0 outside the top k)."""
    rr = 1.0 / (ranks.double() + 1.0)
    return torch.where(ranks < k, rr, torch.zeros_like(rr)).mean().float()


def recall_at_k(ranks: torch.Tensor, k: int, n_relevant: torch.Tensor | None = None) -> torch.Tensor:
    """Recall@k. With one relevant item per row (leave-one-out) it equals HR@k.

    For several relevant items per row pass ``ranks`` as a (b, r) tensor padded with a large value and ``n_relevant`` (b,).
    """
    if ranks.dim() == 1:
        return hit_rate_at_k(ranks, k)
    hits = (ranks < k).sum(dim=1).double()
    denom = n_relevant.double().clamp(min=1)
    return (hits / denom).mean().float()


def auc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ROC AUC by the rank-sum (Mann-Whitney) statistic, with average ranks for ties."""
    scores, labels = scores.double().flatten(), labels.flatten().bool()
    n_pos, n = int(labels.sum()), labels.numel()
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative label")
    order = torch.argsort(scores)
    s = scores[order]
    ranks = torch.empty(n, dtype=torch.float64)
    # average rank within each group of tied scores
    _, inverse, counts = torch.unique_consecutive(s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2.0
    ranks[order] = avg[inverse]
    return ((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)).float()


def logloss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of logits against 0/1 labels."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())


