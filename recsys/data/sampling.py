"""Vectorised negative samplers (numpy): training negatives per positive, each training epoch's shuffled samples,
evaluation candidates per user."""

from __future__ import annotations

import numpy as np
import torch

from recsys.errors import ConfigError

# Below this many user x item cells a dense boolean mask is used for membership tests (22 MB for ML-1M); below
# _BITSET_CELLS a bitset (one bit per cell: 463 MB at ML-20M size, one memory access per query: an ML-20M epoch's
# 79 M negative checks take ~3 s of CPU instead of ~60-110 s of binary search); above it, a binary search over sorted
# (user * n_items + item) keys (158 MB at ML-20M size, 8 bytes per positive).
_DENSE_CELLS = 64_000_000
_BITSET_CELLS = 1 << 33
_CHUNK = 1 << 22   # membership queries answered per block


def sorted_unique(x: np.ndarray, inplace: bool = False) -> np.ndarray:
    """``np.unique(x)`` of a numeric array by sort + neighbour compare, same result.

    numpy 2's ``np.unique`` hashes before sorting: 32 s of CPU for 20 M int64 keys here, against 0.3 s for
    ``np.sort`` (a vectorised sort), so every split-sized unique goes through this instead.

    ``inplace=True`` sorts ``x`` itself (an array the caller owns and gives up) instead of a copy; either way the
    sorted array comes back without a further copy when it has no repeats.
    """
    if inplace:
        x.sort()
    else:
        x = np.sort(np.asarray(x))
    if len(x) < 2:
        return x
    fresh = x[1:] != x[:-1]
    return x if fresh.all() else x[np.concatenate(([True], fresh))]


def csr_from_pairs(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of the unique (user, item) pairs, each user's items sorted ascending."""
    items = np.asarray(items)
    # one int64 key per pair, sorted and deduplicated: ~3x faster than lexsort over (items, users) at 2 M pairs. Built,
    # sorted and reduced in place, with indptr found by binary search: at ML-20M size the int64 copies, temporaries and
    # quotient array of the plain version made the full-ranking mask the run's highest RSS (scale benchmark, 5.1 GB)
    width = int(items.max()) + 1 if len(items) else 1
    keys = np.multiply(users, width, dtype=np.int64)
    keys += items
    keys = sorted_unique(keys, inplace=True)
    indptr = np.searchsorted(keys, np.arange(n_users + 1, dtype=np.int64) * width).astype(np.int64)
    keys %= width
    return indptr, keys


class _Membership:
    """Vectorised "is (user, item) a positive?" over a CSR."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, n_items: int):
        n_users = len(indptr) - 1
        self.n_items = n_items
        rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(indptr))
        cells = n_users * n_items
        self.mask = self.bits = self.keys = None
        if cells <= _DENSE_CELLS:
            self.mask = np.zeros(cells, dtype=bool)
            self.mask[rows * n_items + indices] = True
        elif cells <= _BITSET_CELLS:
            self.bits = np.zeros((cells + 7) // 8, dtype=np.uint8)
            for s in range(0, len(rows), _CHUNK):  # in blocks: bounded temporaries
                keys = rows[s:s + _CHUNK] * n_items + indices[s:s + _CHUNK]
                np.bitwise_or.at(self.bits, keys >> 3, np.left_shift(1, keys & 7).astype(np.uint8))
        else:
            self.keys = np.sort(rows * n_items + indices)

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        if users.ndim == 1 and len(users) > _CHUNK:  # bounded temporaries (ML-20M: 80 M queries, not 3 x 640 MB)
            out = np.empty(len(users), dtype=bool)
            for s in range(0, len(users), _CHUNK):
                out[s:s + _CHUNK] = self(users[s:s + _CHUNK], items[s:s + _CHUNK])
            return out
        q = users * self.n_items + items
        if self.mask is not None:
            return self.mask[q]
        if self.bits is not None:
            return ((self.bits[q >> 3] >> (q & 7).astype(np.uint8)) & 1).astype(bool)
        if len(self.keys) == 0:
            return np.zeros(q.shape, dtype=bool)
        pos = np.searchsorted(self.keys, q)
        np.minimum(pos, len(self.keys) - 1, out=pos)
        return self.keys[pos] == q


class TrainPositives:
    """The train positives' membership lookup and per-user counts, built once per split and reused every epoch.

    Building it sorts (or scatters) every train pair; at ML-20M size that is seconds and ~160 MB per call, so the
    training data keeps one instance instead of rebuilding it for each epoch's negatives.
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, n_items: int):
        self.n_items = int(n_items)
        self.counts = np.diff(indptr)
        self.is_pos = _Membership(indptr, indices, n_items)


def sample_train_negatives(users: np.ndarray, indptr: np.ndarray | None, indices: np.ndarray | None, n_items: int,
                           num_negatives: int, rng: np.random.Generator,
                           positives: TrainPositives | None = None) -> np.ndarray:
    """``num_negatives`` uniform items per entry of ``users`` (with replacement), none a train positive of that user.

    Returns shape ``(len(users) * num_negatives,)``, laid out like ``np.repeat(users, num_negatives)``. Pass a
    prebuilt ``positives`` (then ``indptr``/``indices`` may be None) to skip rebuilding the lookup; the draws are
    the same either way.
    """
    users = np.asarray(users, dtype=np.int64)
    if positives is None:
        positives = TrainPositives(indptr, indices, n_items)
    elif positives.n_items != n_items:
        raise ValueError(f"positives were built for {positives.n_items} items, not {n_items}")
    if len(users) and positives.counts[users].max(initial=0) >= n_items:
        raise ConfigError("A user has interacted with every item: no negatives can be sampled for them.")
    is_pos, k = positives.is_pos, int(num_negatives)
    # draws stay int64 (an int32 draw is another stream); the users of np.repeat(users, k) are taken per block and
    # per redraw, never materialised (~0.6 GB at ML-20M size)
    neg = rng.integers(0, n_items, size=len(users) * k, dtype=np.int64)
    hit = np.empty(len(neg), dtype=bool)
    step = max(1, _CHUNK // max(k, 1)) * max(k, 1)  # whole positives per block
    for s in range(0, len(neg), step):
        hit[s:s + step] = is_pos(np.repeat(users[s // k:(s + step) // k], k), neg[s:s + step])
    bad = np.flatnonzero(hit)
    del hit
    while len(bad):
        neg[bad] = rng.integers(0, n_items, size=len(bad), dtype=np.int64)
        bad = bad[is_pos(users[bad // k], neg[bad])]
    return neg


def _permuted(values: np.ndarray, perm: torch.Tensor) -> torch.Tensor:
    """``torch.from_numpy(values)[perm]`` in blocks: indexing whole converts an int32 ``perm`` to int64 first (a
    0.8 GB temporary at ML-20M size)."""
    src, out = torch.from_numpy(values), torch.empty(len(perm), dtype=torch.from_numpy(values[:0]).dtype)
    for s in range(0, len(perm), _CHUNK):
        torch.index_select(src, 0, perm[s:s + _CHUNK], out=out[s:s + _CHUNK])
    return out


def index_dtype(*sizes: int) -> type:
    """int32 when every index is below 2**31 (half the memory of an epoch's samples), else int64."""
    return np.int32 if max(sizes, default=0) < 2 ** 31 else np.int64


def training_epoch(users: np.ndarray, items: np.ndarray, n_items: int, num_negatives: int, rng: np.random.Generator,
                   positives: TrainPositives, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One epoch's shuffled (users, items, labels): the positives, then each positive's ``num_negatives`` negatives
    (:func:`sample_train_negatives` layout), permuted by ``torch.randperm(generator=gen)``; label 1 for positives.

    Users and items come back as int32 (int64 past 2**31 ids), labels as float32. The values are those of the int64
    assembly this replaced: the same draws, the same permutation. At ML-20M size (98.6 M samples) the assembly peaks at
    ~1.6 GB instead of ~3.2 GB: int32 arrays, filled in place, each source freed as soon as its permuted copy exists.
    """
    n_pos, k = len(users), int(num_negatives)
    dt = index_dtype(positives.counts.size, n_items)
    negs = sample_train_negatives(users, None, None, n_items, k, rng, positives=positives)
    all_items = np.empty(n_pos * (1 + k), dtype=dt)
    all_items[:n_pos] = items
    all_items[n_pos:] = negs
    del negs
    all_users = np.empty_like(all_items)
    all_users[:n_pos] = users
    all_users[n_pos:].reshape(n_pos, k)[:] = users[:, None]
    # randperm's values do not depend on its dtype (checked by test_training_epoch_matches_int64_assembly)
    perm = torch.randperm(len(all_users), generator=gen, dtype=torch.int32 if dt == np.int32 else torch.int64)
    out_users = _permuted(all_users, perm)
    del all_users
    out_items = _permuted(all_items, perm)
    del all_items
    labels = (perm < n_pos).to(torch.float32)  # = labels[perm] for labels 1 on the first n_pos rows, 0 after
    return out_users, out_items, labels


def _row_duplicates(cand: np.ndarray) -> np.ndarray:
    """Mask of entries equal to an earlier (in stable sort order) entry of the same row."""
    order = np.argsort(cand, axis=1, kind="stable")
    s = np.take_along_axis(cand, order, axis=1)
    dup_sorted = np.zeros_like(s, dtype=bool)
    dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
    dup = np.zeros_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return dup


def sample_eval_negatives(users: np.ndarray, indptr: np.ndarray, indices: np.ndarray, n_items: int,
                          n_neg: int, rng: np.random.Generator, max_rounds: int = 100) -> np.ndarray:
    """``(len(users), n_neg)`` items per row, uniform WITHOUT replacement among items the user never interacted with.

    ``indptr``/``indices`` must hold ALL positives (every split). Bulk rejection sampling: draw every row at once,
    then redraw only the entries that hit a positive or repeat an item of their row; rows still incomplete after
    ``max_rounds`` (tiny candidate pools) are drawn exactly from their explicit complement. Reproducible for a seed.
    """
    users = np.asarray(users, dtype=np.int64)
    m = len(users)
    if m == 0:
        return np.zeros((0, n_neg), dtype=np.int64)
    pool = n_items - np.diff(indptr)[users]
    if pool.min() < n_neg:
        raise ConfigError(f"num_eval_negatives={n_neg} but a user has only {int(pool.min())} items they never "
                          f"interacted with; lower num_eval_negatives.")
    is_pos = _Membership(indptr, indices, n_items)
    cand = rng.integers(0, n_items, size=(m, n_neg), dtype=np.int64)
    rows = np.arange(m)
    bad = is_pos(np.repeat(users, n_neg).reshape(m, n_neg), cand) | _row_duplicates(cand)
    todo = rows[bad.any(axis=1)]
    for _ in range(max_rounds):
        if len(todo) == 0:
            break
        sub, sub_bad = cand[todo], bad[todo]
        sub[sub_bad] = rng.integers(0, n_items, size=int(sub_bad.sum()), dtype=np.int64)
        sub_bad = is_pos(np.repeat(users[todo], n_neg).reshape(len(todo), n_neg), sub) | _row_duplicates(sub)
        cand[todo], bad[todo] = sub, sub_bad
        todo = todo[sub_bad.any(axis=1)]
    for r in todo:  # only rows whose pool is nearly exhausted
        u = users[r]
        allowed = np.setdiff1d(np.arange(n_items), indices[indptr[u]:indptr[u + 1]])
        cand[r] = rng.choice(allowed, size=n_neg, replace=False)
    return cand
