"""Evaluation protocols: the NCF sampled protocol (target among sampled negatives) and full-catalogue ranking.

Both take any model with ``score(users, items)`` (and ``score_all(users)`` when it has a fast path), so every model of a
family is evaluated by the same code.
"""
from __future__ import annotations

import numpy as np
import torch

from recsys.evaluation import metrics as M


def _score_all(model: torch.nn.Module, users: torch.Tensor, n_items: int) -> torch.Tensor:
    if hasattr(model, "score_all"):
        return model.score_all(users)
    items = torch.arange(n_items).repeat(len(users))
    return model.score(users.repeat_interleave(n_items), items).view(len(users), n_items)


def ranking_metrics(ranks: torch.Tensor, ks: tuple[int, ...], prefix: str = "") -> dict[str, float]:
    """HR, NDCG, recall and MRR at each k from 0-based target ranks."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"{prefix}hr_at_{k}"] = float(M.hit_rate_at_k(ranks, k))
        out[f"{prefix}ndcg_at_{k}"] = float(M.ndcg_at_k(ranks, k))
        out[f"{prefix}mrr_at_{k}"] = float(M.mrr_at_k(ranks, k))
    return out


@torch.inference_mode()
def sampled_scores(model: torch.nn.Module, users: np.ndarray | torch.Tensor, candidates: np.ndarray | torch.Tensor,
                   batch_users: int = 2048) -> torch.Tensor:
    """Scores (users, candidates) of every user's candidate row (column 0 = the held-out positive)."""
    users, candidates = torch.as_tensor(users), torch.as_tensor(candidates)
    out = []
    for s in range(0, len(users), batch_users):
        u, c = users[s:s + batch_users], candidates[s:s + batch_users]
        out.append(model.score(u[:, None].expand_as(c).reshape(-1), c.reshape(-1)).view(c.shape))
    return torch.cat(out)


def sampled_auc(scores: torch.Tensor) -> float:
    """AUC over all (positive = column 0, sampled negative) candidates pooled, the CTR family's definition, so ranking
    and CTR models report the same number on the same candidates."""
    labels = torch.zeros_like(scores)
    labels[:, 0] = 1.0
    return float(M.auc(scores.flatten(), labels.flatten()))


def sampled_ranks(model: torch.nn.Module, users: np.ndarray | torch.Tensor, candidates: np.ndarray | torch.Tensor,
                  batch_users: int = 2048) -> torch.Tensor:
    """Rank of column 0 of ``candidates`` (the held-out positive) among the row's candidates, for every user."""
    scores = sampled_scores(model, users, candidates, batch_users)
    return M.rank_of_target(scores, scores[:, 0])


def csr_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row position, column) pairs of the given CSR rows, vectorised (for masking known positives)."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    pos = np.repeat(np.arange(len(rows)), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return pos, indices[np.repeat(starts, lengths) + offsets]


@torch.inference_mode()
def full_ranks(model: torch.nn.Module, users: np.ndarray, targets: np.ndarray, n_items: int,
               mask_indptr: np.ndarray, mask_indices: np.ndarray, batch_users: int = 512) -> torch.Tensor:
    """Rank of each user's target among all items, with the user's known (non-target) positives masked out."""
    out = []
    for s in range(0, len(users), batch_users):
        u = np.asarray(users[s:s + batch_users])
        scores = _score_all(model, torch.as_tensor(u), n_items).float()
        t = torch.as_tensor(np.asarray(targets[s:s + batch_users]))
        target_scores = scores.gather(1, t[:, None]).squeeze(1)
        r, c = csr_rows(mask_indptr, mask_indices, u)
        scores[torch.as_tensor(r), torch.as_tensor(c)] = float("-inf")
        scores.scatter_(1, t[:, None], target_scores[:, None])  # a target is never masked, even if listed
        out.append(M.rank_of_target(scores, target_scores))
    return torch.cat(out)
