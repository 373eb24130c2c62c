"""Implicit-feedback splits (leave-one-out), evaluation candidates, and the cached :func:`build_split`.

Rules (pinned by tests):

* Every interaction is an implicit positive (after ``min_rating`` filtering); duplicate (user, item) pairs collapse
  into one, keeping the latest timestamp.
* Users and items are re-indexed 0.. in sorted order of their raw ids (``user_ids[k]`` / ``item_ids[k]`` give them back).
* Leave-one-out: a user's interactions are ordered by (timestamp, item index); the last one is the test positive, the
  one before it the validation positive. Ties in timestamp are therefore broken by the LARGER item index being later.
  Without timestamps the order is a random permutation drawn from the seed (ties again broken by item index).
* Users with fewer than 3 interactions keep all of them in train and are not evaluated.
* With a pre-split test set (csv ``test_file``, NCF ``test.rating``) that set is the test set; train pairs equal to a
  test pair are dropped, and the validation positive is taken from train by the same ordering rule, for users with at
  least 2 train positives. So the validation item is never the test item and never a train positive.
* Evaluation negatives: ``num_eval_negatives`` per evaluated row, uniform without replacement among items the user
  never interacted with in any split. NCF's own ``test.negative`` is used as-is for the NCF format (156 of its ML-1M
  rows contain the user's test item; see :attr:`ImplicitSplit.n_test_item_in_negatives`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from filelock import FileLock

from recsys.data.config import DataConfig, parse_data_cfg
from recsys.data.readers import (
    count_test_item_in_negatives,
    movielens_ratings_path,
    read_csv_interactions,
    read_movielens,
    read_ncf,
    read_test_negatives,
)
from recsys.data.sampling import csr_from_pairs, sample_eval_negatives, sorted_unique
from recsys.data.sources import default_cache_dir, find_file, resolve_files, sha256_files
from recsys.errors import ConfigError
from recsys.fileio import atomic_path

log = logging.getLogger(__name__)

SPLIT_VERSION = 2  # bump when the split rules change, so old caches are not reused
_ARRAYS = ("train_users", "train_items", "val_users", "val_items", "test_users", "test_items",
           "val_negatives", "test_negatives", "user_ids", "item_ids")


@dataclass(eq=False)
class ImplicitSplit:
    """Indexed implicit-feedback split: train positives, one val and one test positive per evaluated user, negatives."""

    n_users: int
    n_items: int
    train_users: np.ndarray
    train_items: np.ndarray
    val_users: np.ndarray
    val_items: np.ndarray
    test_users: np.ndarray
    test_items: np.ndarray
    val_negatives: np.ndarray
    test_negatives: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    name: str = ""
    checksum: str = ""
    split_rule: str = ""          # how the test / validation items were chosen (logged as the run's ``split`` tag)
    skipped_lines: int = 0        # malformed lines dropped with data.bad_lines=skip
    _csr: dict = field(default_factory=dict, init=False, repr=False)

    def train_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """(indptr, indices) of each user's train positives, items sorted: masks for full ranking, sampler input."""
        if "train" not in self._csr:
            self._csr["train"] = csr_from_pairs(self.train_users, self.train_items, self.n_users)
        return self._csr["train"]

    def all_positives_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """(indptr, indices) of each user's train + val + test positives, items sorted."""
        if "all" not in self._csr:
            u = np.concatenate([self.train_users, self.val_users, self.test_users])
            i = np.concatenate([self.train_items, self.val_items, self.test_items])
            self._csr["all"] = csr_from_pairs(u, i, self.n_users)
        return self._csr["all"]

    def known_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """(indptr, indices) of each user's train + validation positives: what full ranking of test masks out."""
        if "known" not in self._csr:
            u = np.concatenate([self.train_users, self.val_users])
            i = np.concatenate([self.train_items, self.val_items])
            self._csr["known"] = csr_from_pairs(u, i, self.n_users)
        return self._csr["known"]

    def test_candidates(self) -> np.ndarray:
        """(n_test, 1 + n_neg): each test user's held-out item in column 0, then its evaluation negatives."""
        return np.concatenate([self.test_items[:, None], self.test_negatives], axis=1)

    def val_candidates(self) -> np.ndarray:
        """(n_val, 1 + n_neg): as ``test_candidates`` for the validation hold-out."""
        return np.concatenate([self.val_items[:, None], self.val_negatives], axis=1)

    @property
    def n_test_item_in_negatives(self) -> int:
        """Test rows whose negatives contain the test item (0 when sampled here; 156 for NCF's own ML-1M file)."""
        return count_test_item_in_negatives(self.test_items, self.test_negatives)

    def tags(self) -> dict[str, str]:
        """Run tags describing how this split was made."""
        return {"split": self.split_rule} if self.split_rule else {}

    def summary(self) -> dict[str, Any]:
        """Sizes, for logging as MLflow params."""
        return {"name": self.name, "n_users": self.n_users, "n_items": self.n_items, "n_train": len(self.train_users),
                "n_val": len(self.val_users), "n_test": len(self.test_users),
                "num_eval_negatives": int(self.test_negatives.shape[1]) if self.test_negatives.ndim == 2 else 0}

    def save(self, path: str | os.PathLike) -> None:
        """Write the split to an ``.npz`` atomically."""
        arrays = {k: getattr(self, k) for k in _ARRAYS}
        with atomic_path(path) as tmp:
            np.savez(tmp, n_users=self.n_users, n_items=self.n_items, name=self.name, checksum=self.checksum,
                     split_rule=self.split_rule, skipped_lines=self.skipped_lines, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ImplicitSplit":
        """Read a split written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            extra = {"split_rule": str(z["split_rule"]), "skipped_lines": int(z["skipped_lines"])} \
                if "split_rule" in z.files else {}
            return cls(n_users=int(z["n_users"]), n_items=int(z["n_items"]), name=str(z["name"]),
                       checksum=str(z["checksum"]), **extra, **{k: z[k] for k in _ARRAYS})


def _lex_order(users: np.ndarray, key: np.ndarray, items: np.ndarray) -> np.ndarray:
    """``np.lexsort((items, key, users))``: one stable argsort of a packed int64 key when the three fit in 63 bits
    (ML-20M with timestamps: 18 + 30 + 15 bits; 4 s of CPU at 20 M rows against 16 s for lexsort), else lexsort."""
    if len(users) == 0:
        return np.zeros(0, dtype=np.int64)
    kmin, kmax = int(key.min()), int(key.max())
    width, span = int(items.max()) + 1, kmax - kmin + 1
    if int(users.min()) < 0 or int(items.min()) < 0 or (int(users.max()) + 1) * span * width >= 2 ** 63:
        return np.lexsort((items, key, users))
    packed = (users.astype(np.int64) * span + (key.astype(np.int64) - kmin)) * width + items
    return np.argsort(packed, kind="stable")


def _rank_from_end(users: np.ndarray, items: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row: its position counted from the user's last row in (key, item) order, and the user's row count."""
    order = _lex_order(users, key, items)
    su = users[order]
    n = len(su)
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]]) if n else np.zeros(0, dtype=np.int64)
    counts = np.diff(np.r_[starts, n])
    ends = np.repeat(starts + counts, counts)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = ends - 1 - np.arange(n)
    cnt = np.empty(n, dtype=np.int64)
    cnt[order] = np.repeat(counts, counts)
    return rank, cnt


def _order_key(timestamps: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(timestamps, dtype=np.int64) if timestamps is not None else rng.permutation(n)


def leave_one_out(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices (train, val, test): per user with >= 3 rows the last row is test, the one before val."""
    rank, cnt = _rank_from_end(users, items, _order_key(timestamps, len(users), rng))
    eligible = cnt >= 3
    test = np.flatnonzero(eligible & (rank == 0))
    val = np.flatnonzero(eligible & (rank == 1))
    train = np.flatnonzero(~eligible | (rank >= 2))
    return train, val[np.argsort(users[val], kind="stable")], test[np.argsort(users[test], kind="stable")]


def hold_out_last(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None,
                  rng: np.random.Generator, min_count: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (kept, held_out): the last row of every user with >= ``min_count`` rows is held out."""
    rank, cnt = _rank_from_end(users, items, _order_key(timestamps, len(users), rng))
    held = (cnt >= min_count) & (rank == 0)
    out = np.flatnonzero(held)
    return np.flatnonzero(~held), out[np.argsort(users[out], kind="stable")]


def _dedupe(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item), keeping the latest timestamp; rows ordered by timestamp (stable)."""
    order = _dedupe_order(df)
    if order is not None:
        return df.take(order).reset_index(drop=True)
    if "timestamp" in df:
        df = df.sort_values("timestamp", kind="stable")
    return df.drop_duplicates(["user", "item"], keep="last").reset_index(drop=True)


def _dedupe_order(df: pd.DataFrame) -> np.ndarray | None:
    """Rows kept by :func:`_dedupe`, in its order, for integer ids (else None): the same rows as pandas' stable
    ``sort_values`` + ``drop_duplicates(keep="last")`` from two argsorts (~5 s of CPU at 20 M rows against 12 s)."""
    u, i = df["user"].to_numpy(), df["item"].to_numpy()
    if len(df) == 0 or u.dtype.kind not in "iu" or i.dtype.kind not in "iu":
        return None
    umin, imin = int(u.min()), int(i.min())
    width = int(i.max()) - imin + 1
    if (int(u.max()) - umin + 1) * width >= 2 ** 63:
        return None
    order = (np.argsort(df["timestamp"].to_numpy(), kind="stable") if "timestamp" in df
             else np.arange(len(df), dtype=np.int64))
    keys = ((u.astype(np.int64) - umin) * width + (i.astype(np.int64) - imin))[order]
    s = np.sort(keys)
    if len(s) < 2 or not (s[1:] == s[:-1]).any():
        return order
    by_key = np.argsort(keys, kind="stable")       # each pair's rows, in timestamp order
    k = keys[by_key]
    last = np.concatenate((k[1:] != k[:-1], [True]))
    return order[np.sort(by_key[last])]


def _source_files(cfg: DataConfig, folder: Path) -> list[Path]:
    """The files that :func:`_compute_split` will read (for the checksum)."""
    if cfg.format == "movielens":
        return [movielens_ratings_path(folder)]
    return [find_file(folder, f) for f in cfg.required_files()]


def _read_frames(cfg: DataConfig, folder: Path) -> tuple[pd.DataFrame, pd.DataFrame | None, np.ndarray | None]:
    """(all-or-train interactions, pre-split test or None, raw test negatives or None)."""
    if cfg.format == "movielens":
        return read_movielens(cfg.source, folder, bad_lines=cfg.bad_lines), None, None
    if cfg.format == "csv":
        kw = dict(user_col=cfg.user_col, item_col=cfg.item_col, time_col=cfg.time_col, rating_col=cfg.rating_col,
                  sep=cfg.sep, header=cfg.header, time_format=cfg.time_format, bad_lines=cfg.bad_lines)
        train = read_csv_interactions(find_file(folder, cfg.train_file), **kw)
        test = read_csv_interactions(find_file(folder, cfg.test_file), **kw) if cfg.test_file else None
        negs = None
        if cfg.test_negatives_file:
            if test.attrs.get("skipped_lines"):
                raise ConfigError(f"{cfg.test_file}: bad lines were skipped, so {cfg.test_negatives_file} can no "
                                  "longer be matched to its rows; fix the file or leave out test_negatives_file.")
            negs = read_test_negatives(find_file(folder, cfg.test_negatives_file), test, cfg.test_file)
        return train, test, negs
    ncf = read_ncf(folder, cfg.ncf_prefix)
    return ncf.train, ncf.test, ncf.negatives


def _compute_split(cfg: DataConfig, folder: Path, seed: int, checksum: str) -> ImplicitSplit:
    """Read, filter, re-index, split and sample (the slow path behind the cache)."""
    df, test_df, raw_negs = _read_frames(cfg, folder)
    skipped = int(df.attrs.get("skipped_lines", 0)) + (int(test_df.attrs.get("skipped_lines", 0))
                                                        if test_df is not None else 0)
    if cfg.min_rating is not None:
        df = df[df["rating"] >= cfg.min_rating]
        if test_df is not None:
            test_df = test_df[test_df["rating"] >= cfg.min_rating]
            if raw_negs is not None:
                raw_negs = raw_negs[test_df.index.to_numpy()]
    df = _dedupe(df)
    frames = [df] if test_df is None else [df, test_df.reset_index(drop=True)]
    all_users = pd.concat([f["user"] for f in frames], ignore_index=True)
    all_items = pd.concat([f["item"] for f in frames] + ([pd.Series(raw_negs.ravel())] if raw_negs is not None else []),
                          ignore_index=True)
    user_ids = _sorted_unique(all_users)
    item_ids = _sorted_unique(all_items)
    del all_users, all_items
    u, i = _index(user_ids, df["user"]), _index(item_ids, df["item"])
    ts = np.array(df["timestamp"].to_numpy(), dtype=np.int64) if "timestamp" in df else None  # a copy, not a view
    del df, frames  # the frame's columns are no longer needed: ~0.5 GB at ML-20M size while the split is built
    split_rng = np.random.default_rng([seed, 0])
    order = "latest by timestamp" if ts is not None else f"a random item per user (seeded: seed={seed})"
    if test_df is None:
        rule = f"leave-one-out: test = {order}, validation = the one before it"
    else:
        rule = f"test = the test file; validation = {order} among each user's train items"
    if test_df is None:
        tr, va, te = leave_one_out(u, i, ts, split_rng)
        test_u, test_i = u[te], i[te]
        test_negs = None
    else:
        test_u, test_i = _index(user_ids, test_df["user"]), _index(item_ids, test_df["item"])
        n_items = len(item_ids)
        in_test = np.isin(u * n_items + i, test_u * n_items + test_i)
        if in_test.any():
            log.warning("%s: dropped %d train pairs that are also test pairs.", cfg.name, int(in_test.sum()))
            u, i = u[~in_test], i[~in_test]
            ts = ts[~in_test] if ts is not None else None
        tr, va = hold_out_last(u, i, ts, split_rng, min_count=2)
        test_negs = _index(item_ids, pd.Series(raw_negs.ravel())).reshape(raw_negs.shape) if raw_negs is not None else None
    n_users, n_items = len(user_ids), len(item_ids)
    all_indptr, all_indices = csr_from_pairs(np.concatenate([u, test_u]), np.concatenate([i, test_i]), n_users)
    val_negs = sample_eval_negatives(u[va], all_indptr, all_indices, n_items, cfg.num_eval_negatives,
                                     np.random.default_rng([seed, 1]))
    if test_negs is None:
        test_negs = sample_eval_negatives(test_u, all_indptr, all_indices, n_items, cfg.num_eval_negatives,
                                          np.random.default_rng([seed, 2]))
    return ImplicitSplit(
        n_users=n_users, n_items=n_items, train_users=u[tr], train_items=i[tr], val_users=u[va], val_items=i[va],
        test_users=test_u, test_items=test_i, val_negatives=val_negs, test_negatives=test_negs,
        user_ids=_id_array(user_ids), item_ids=_id_array(item_ids), name=cfg.name, checksum=checksum,
        split_rule=rule, skipped_lines=skipped)


def _sorted_unique(values: pd.Series) -> np.ndarray:
    """Sorted distinct raw ids as a numpy array (int64 for integer ids, object otherwise)."""
    arr = values.to_numpy()
    if arr.dtype.kind not in "iu":
        return np.unique(np.asarray(values.astype(str).to_numpy(), dtype=object))
    return sorted_unique(arr)


def _index(ids: np.ndarray, values: pd.Series) -> np.ndarray:
    """0-based indices of raw ``values`` in the sorted ``ids``."""
    arr = values.to_numpy()
    if ids.dtype == object:
        arr = np.asarray(values.astype(str).to_numpy(), dtype=object)
    elif len(ids) and 0 <= ids[0] and ids[-1] <= 4 * len(ids) + 1_000_000:
        # small non-negative integer ids (MovieLens, make_synthetic): a lookup table, O(n) instead of a binary search
        lut = np.zeros(int(ids[-1]) + 1, dtype=np.int64)
        lut[ids] = np.arange(len(ids))
        return lut[arr]
    return np.searchsorted(ids, arr).astype(np.int64)


def _id_array(ids: np.ndarray) -> np.ndarray:
    """Raw ids as an npz-safe array (int64 when numeric, else unicode strings)."""
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    return ids.astype(str)


def split_cache_key(cfg: DataConfig, seed: int, checksum: str) -> str:
    """sha256 of (normalised data config, seed, source checksum, split rules version)."""
    blob = json.dumps({"cfg": cfg.as_dict(), "seed": int(seed), "source": checksum, "version": SPLIT_VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def build_split(data_cfg: Mapping[str, Any] | DataConfig, data_dir: str | os.PathLike | None,
                cache_dir: str | os.PathLike | None, seed: int) -> ImplicitSplit:
    """The split for ``data_cfg`` and ``seed``: from ``<cache_dir>/splits/<key>.npz`` if present, else built there."""
    cfg = parse_data_cfg(data_cfg)
    cache_root = default_cache_dir(cache_dir)
    folder = resolve_files(cfg.source, data_dir, cache_root, cfg.required_files())
    checksum = sha256_files(_source_files(cfg, folder))
    path = cache_root / "splits" / f"{split_cache_key(cfg, seed, checksum)}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):
        if path.is_file():
            try:
                return ImplicitSplit.load(path)
            except (OSError, ValueError, KeyError) as exc:  # a truncated or foreign file: rebuild it
                log.warning("Ignoring unreadable split cache %s (%s); rebuilding.", path, exc)
        t0 = time.perf_counter()
        split = _compute_split(cfg, folder, seed, checksum)
        split.save(path)
        log.info("Built split %s in %.1fs -> %s", cfg.name, time.perf_counter() - t0, path)
    return split


__all__ = ["ImplicitSplit", "build_split", "leave_one_out", "hold_out_last", "split_cache_key"]
