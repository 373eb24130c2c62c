"""Negative samplers: never a positive, right shapes, unique eval candidates, reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.data import sampling
from recsys.data.readers import read_movielens
from recsys.data.sampling import csr_from_pairs, sample_eval_negatives, sample_train_negatives
from test_data_splits import need

LOOKUPS = ["dense", "bitset", "keys"]


def use_lookup(kind: str, monkeypatch) -> None:
    """Force the positives lookup kind (dense mask / bitset / sorted keys) whatever the table size."""
    if kind != "dense":
        monkeypatch.setattr(sampling, "_DENSE_CELLS", 0)
    if kind == "keys":
        monkeypatch.setattr(sampling, "_BITSET_CELLS", 0)


def _ml100k():
    df = read_movielens("ml-100k", need("ml-100k") / "ml-100k")
    u = df["user"].to_numpy() - 1
    i = df["item"].to_numpy() - 1
    return u, i, 943, 1682


def test_csr_sorted_and_deduplicated():
    indptr, indices = csr_from_pairs(np.array([1, 0, 1, 1]), np.array([5, 2, 3, 5]), 3)
    assert indptr.tolist() == [0, 1, 3, 3] and indices.tolist() == [2, 3, 5]


@pytest.mark.parametrize("lookup", LOOKUPS)
def test_train_negatives_synthetic_dense_user(lookup, monkeypatch):
    use_lookup(lookup, monkeypatch)
    # user 0 has every item but one: all its negatives must be that item
    users = np.array([0] * 9 + [1])
    items = np.array([0, 1, 2, 3, 4, 5, 6, 8, 9, 0])
    indptr, indices = csr_from_pairs(users, items, 2)
    neg = sample_train_negatives(np.array([0, 1, 0]), indptr, indices, 10, 5, np.random.default_rng(0))
    assert neg.shape == (15,)
    assert (neg[:5] == 7).all() and (neg[10:] == 7).all() and (neg[5:10] != 0).all()


@pytest.mark.realdata
@pytest.mark.parametrize("lookup", LOOKUPS)
def test_train_negatives_never_positive_ml100k(lookup, monkeypatch):
    use_lookup(lookup, monkeypatch)
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


def test_sorted_unique_is_np_unique():
    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 50, 5000):
        x = rng.integers(-20, 40, n)
        assert np.array_equal(sampling.sorted_unique(x), np.unique(x))


def _int64_epoch(users, items, n_items, k, rng, positives, gen):
    """The epoch assembly before int32 tensors (main at 011232d), kept as the reference."""
    import torch

    n_pos = len(users)
    negs = sample_train_negatives(users, None, None, n_items, k, rng, positives=positives)
    all_users = np.concatenate([users, np.repeat(users, k)]).astype(np.int64)
    all_items = np.concatenate([items, negs]).astype(np.int64)
    perm = torch.randperm(len(all_users), generator=gen)
    return torch.from_numpy(all_users)[perm], torch.from_numpy(all_items)[perm], (perm < n_pos).to(torch.float32)


@pytest.mark.parametrize("chunk,lookup", [(1 << 22, "dense"), (5, "bitset"), (5, "keys")])
def test_training_epoch_matches_int64_assembly(chunk, lookup, monkeypatch):
    import torch

    monkeypatch.setattr(sampling, "_CHUNK", chunk)  # 5: blocks of 4 queries, not a multiple of k * n_users
    use_lookup(lookup, monkeypatch)
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 400), rng.integers(0, 25, 400)
    keep = np.unique(users * 25 + items, return_index=True)[1]
    users, items = users[keep], items[keep]
    positives = sampling.TrainPositives(*csr_from_pairs(users, items, 30), 25)
    for k in (0, 1, 4):
        got = sampling.training_epoch(users, items, 25, k, np.random.default_rng(9), positives,
                                      torch.Generator().manual_seed(11))
        ref = _int64_epoch(users, items, 25, k, np.random.default_rng(9), positives, torch.Generator().manual_seed(11))
        assert got[0].dtype == got[1].dtype == torch.int32 and got[2].dtype == torch.float32
        for g, r in zip(got, ref):
            assert torch.equal(g.to(r.dtype), r)


@pytest.mark.parametrize("lookup", LOOKUPS)
def test_lookups_agree(lookup, monkeypatch):
    """Each membership lookup answers every (user, item) cell right, including users with no positives."""
    use_lookup(lookup, monkeypatch)
    rng = np.random.default_rng(4)
    users, items = rng.integers(0, 40, 300), rng.integers(0, 37, 300)
    indptr, indices = csr_from_pairs(users, items, 41)
    q_u, q_i = np.repeat(np.arange(41), 37), np.tile(np.arange(37), 41)
    got = sampling._Membership(indptr, indices, 37)(q_u, q_i)
    assert np.array_equal(got, np.isin(q_u * 37 + q_i, users * 37 + items))
