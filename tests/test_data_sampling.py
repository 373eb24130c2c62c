"""Negative samplers: never a positive, right shapes, unique eval candidates, reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.data import sampling
from recsys.data.readers import read_movielens
from recsys.data.sampling import csr_from_pairs, sample_eval_negatives, sample_train_negatives
from test_data_splits import need


def _ml100k():
    df = read_movielens("ml-100k", need("ml-100k") / "ml-100k")
    u = df["user"].to_numpy() - 1
    i = df["item"].to_numpy() - 1
    return u, i, 943, 1682


def test_csr_sorted_and_deduplicated():
    indptr, indices = csr_from_pairs(np.array([1, 0, 1, 1]), np.array([5, 2, 3, 5]), 3)
    assert indptr.tolist() == [0, 1, 3, 3] and indices.tolist() == [2, 3, 5]


@pytest.mark.parametrize("dense", [True, False])
def test_train_negatives_synthetic_dense_user(dense, monkeypatch):
    if not dense:
        monkeypatch.setattr(sampling, "_DENSE_CELLS", 0)
    # user 0 has every item but one: all its negatives must be that item
    users = np.array([0] * 9 + [1])
    items = np.array([0, 1, 2, 3, 4, 5, 6, 8, 9, 0])
    indptr, indices = csr_from_pairs(users, items, 2)
    neg = sample_train_negatives(np.array([0, 1, 0]), indptr, indices, 10, 5, np.random.default_rng(0))
    assert neg.shape == (15,)
    assert (neg[:5] == 7).all() and (neg[10:] == 7).all() and (neg[5:10] != 0).all()


@pytest.mark.realdata
@pytest.mark.parametrize("dense", [True, False])
def test_train_negatives_never_positive_ml100k(dense, monkeypatch):
    if not dense:
        monkeypatch.setattr(sampling, "_DENSE_CELLS", 0)
    u, i, n_users, n_items = _ml100k()
    indptr, indices = csr_from_pairs(u, i, n_users)
    neg = sample_train_negatives(u, indptr, indices, n_items, 4, np.random.default_rng(0))
    assert neg.shape == (len(u) * 4,)
    assert neg.min() >= 0 and neg.max() < n_items
    rep = np.repeat(u, 4)
    assert not np.isin(rep * n_items + neg, u * n_items + i).any()
    again = sample_train_negatives(u, indptr, indices, n_items, 4, np.random.default_rng(0))
    assert np.array_equal(neg, again)


def test_eval_negatives_unique_and_exact_when_pool_small():
    # user 0 may use only items {7, 8, 9}: 3 negatives must be exactly those
    users = np.repeat([0, 1], [7, 1])
    items = np.array([0, 1, 2, 3, 4, 5, 6, 0])
    indptr, indices = csr_from_pairs(users, items, 2)
    neg = sample_eval_negatives(np.array([0, 1]), indptr, indices, 10, 3, np.random.default_rng(0))
    assert sorted(neg[0].tolist()) == [7, 8, 9]
    assert len(set(neg[1].tolist())) == 3 and 0 not in neg[1]
    with pytest.raises(ValueError, match="num_eval_negatives"):
        sample_eval_negatives(np.array([0]), indptr, indices, 10, 4, np.random.default_rng(0))


@pytest.mark.realdata
def test_eval_negatives_ml100k_all_users():
    u, i, n_users, n_items = _ml100k()
    indptr, indices = csr_from_pairs(u, i, n_users)
    eval_users = np.arange(n_users)
    neg = sample_eval_negatives(eval_users, indptr, indices, n_items, 99, np.random.default_rng(5))
    assert neg.shape == (n_users, 99)
    assert not np.isin(eval_users[:, None] * n_items + neg, u * n_items + i).any()
    srt = np.sort(neg, axis=1)
    assert (srt[:, 1:] != srt[:, :-1]).all()
    assert np.array_equal(neg, sample_eval_negatives(eval_users, indptr, indices, n_items, 99,
                                                     np.random.default_rng(5)))
    assert not np.array_equal(neg, sample_eval_negatives(eval_users, indptr, indices, n_items, 99,
                                                         np.random.default_rng(6)))
