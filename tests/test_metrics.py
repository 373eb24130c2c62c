"""Metrics against hand-computed rankings, ties included (ties rank above the target: pessimistic)."""
import math

import pytest
import torch

from recsys.evaluation import metrics as M
from recsys.evaluation.protocols import csr_rows, full_ranks, sampled_ranks


def test_rank_counts_ties_against_the_target():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.95],   # target 0.9: one higher -> rank 1
                           [0.5, 0.5, 0.5, 0.1],    # target 0.5 tied with two others -> rank 2
                           [0.3, 0.3, 0.3, 0.3]])   # all tied -> worst rank 3
    ranks = M.rank_of_target(scores, scores[:, 0])
    assert ranks.tolist() == [1, 2, 3]


def test_hr_ndcg_mrr_hand_computed():
    ranks = torch.tensor([0, 1, 9, 10, 50])
    assert M.hit_rate_at_k(ranks, 10).item() == pytest.approx(3 / 5)
    expected_ndcg = (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(11)) / 5
    assert M.ndcg_at_k(ranks, 10).item() == pytest.approx(expected_ndcg, rel=1e-6)
    assert M.mrr_at_k(ranks, 10).item() == pytest.approx((1 + 1 / 2 + 1 / 10) / 5, rel=1e-6)
    assert M.hit_rate_at_k(ranks, 1).item() == pytest.approx(1 / 5)
    assert M.recall_at_k(ranks, 10).item() == pytest.approx(3 / 5)


def test_recall_with_several_relevant_items():
    ranks = torch.tensor([[0, 3, 99], [20, 99, 99]])
    n_rel = torch.tensor([3, 1])
    assert M.recall_at_k(ranks, 10, n_rel).item() == pytest.approx((2 / 3 + 0) / 2)


def test_auc_matches_pair_counting_with_ties():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4, 0.2])
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p in pos for n in neg]
    assert M.auc(scores, labels).item() == pytest.approx(sum(pairs) / len(pairs))
    with pytest.raises(ValueError, match="positive and one negative"):
        M.auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))


def test_logloss_is_bce():
    logits, labels = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0])
    expected = -(math.log(1 / (1 + math.exp(-2.0))) + math.log(1 - 1 / (1 + math.exp(1.0)))) / 2
    assert M.logloss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


class _TableModel(torch.nn.Module):
    """score(u, i) = table[u, i] — a model whose rankings are known by construction."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def score(self, u, i):
        return self.table[u, i]

    def score_all(self, u):
        return self.table[u]


def test_sampled_and_full_ranking_protocols_hand_computed():
    table = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5],
                          [0.1, 0.2, 0.3, 0.4, 0.5]])
    model = _TableModel(table)
    users = torch.tensor([0, 1])
    cands = torch.tensor([[2, 3, 4], [0, 1, 4]])  # target first
    assert sampled_ranks(model, users, cands).tolist() == [0, 2]
    # full ranking: user 0 target 2 with item 0 masked (known positive) -> only item 1 above -> rank 1
    indptr, indices = torch.tensor([0, 1, 3]).numpy(), torch.tensor([0, 4, 2]).numpy()
    ranks = full_ranks(model, users.numpy(), torch.tensor([2, 3]).numpy(), 5, indptr, indices)
    # user 1 target 3: item 4 masked, item 2 listed as known but is not the target -> masked too -> rank 0
    assert ranks.tolist() == [1, 0]


def test_csr_rows_vectorised():
    indptr = torch.tensor([0, 2, 2, 5]).numpy()
    indices = torch.tensor([7, 8, 1, 2, 3]).numpy()
    pos, cols = csr_rows(indptr, indices, torch.tensor([2, 0]).numpy())
    assert pos.tolist() == [0, 0, 0, 1, 1] and cols.tolist() == [1, 2, 3, 7, 8]


def test_sampled_auc_pools_positive_column_against_all_negatives():
    from recsys.evaluation.protocols import sampled_auc

    # two users, positive in column 0: user 0's positive beats both negatives, user 1's beats one of two
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.5, 0.6, 0.4]])
    # pooled pairs: positive 0.9 beats all 4 negatives; positive 0.5 beats 0.1, 0.2, 0.4, loses to 0.6 -> 7 / 8
    assert sampled_auc(scores) == pytest.approx(7 / 8)
