"""Split rules (leave-latest-out with ties, pre-split test), evaluation negatives, determinism and the split cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from recsys.data import splits as splits_mod
from recsys.data.splits import ImplicitSplit, build_split, hold_out_last, leave_one_out


def shared_datasets() -> Path:
    env = os.environ.get("RECSYS_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def need(folder: str) -> Path:
    if not (shared_datasets() / folder).is_dir():
        pytest.skip(f"real dataset folder {shared_datasets() / folder} is absent (set RECSYS_DATA_DIR)")
    return shared_datasets()


ML100K = {"name": "ml-100k", "format": "movielens", "source": "ml-100k"}


def pairs(u: np.ndarray, i: np.ndarray, n_items: int) -> set[int]:
    return set((u.astype(np.int64) * n_items + i).tolist())


def test_latest_timestamp_rule_with_ties():
    # user 0: item 5 @10, items 3 and 9 tie @20 -> larger item (9) is latest -> test 9, val 3
    # user 1: only 2 interactions -> train only; user 2: 3 distinct times -> test 7 (t=3), val 1 (t=2)
    users = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    items = np.array([5, 9, 3, 1, 2, 7, 1, 4])
    ts = np.array([10, 20, 20, 1, 2, 3, 2, 1])
    tr, va, te = leave_one_out(users, items, ts, np.random.default_rng(0))
    assert users[te].tolist() == [0, 2] and items[te].tolist() == [9, 7]
    assert users[va].tolist() == [0, 2] and items[va].tolist() == [3, 1]
    assert sorted(zip(users[tr].tolist(), items[tr].tolist())) == [(0, 5), (1, 1), (1, 2), (2, 4)]


def test_hold_out_last_needs_two_rows():
    users = np.array([0, 0, 1])
    items = np.array([4, 2, 3])
    kept, held = hold_out_last(users, items, np.array([1, 1, 1]), np.random.default_rng(0))
    assert items[held].tolist() == [4] and sorted(items[kept].tolist()) == [2, 3]


def test_random_holdout_without_timestamps_is_seeded():
    rng_users = np.repeat(np.arange(50), 10)
    items = np.tile(np.arange(10), 50)
    a = leave_one_out(rng_users, items, None, np.random.default_rng(1))
    b = leave_one_out(rng_users, items, None, np.random.default_rng(1))
    c = leave_one_out(rng_users, items, None, np.random.default_rng(2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(items[a[2]], items[c[2]])


def _write_csv(tmp_path: Path, n_users: int = 60, n_items: int = 40, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder = tmp_path / "toy"
    folder.mkdir()
    lines = ["uid,iid,ts,stars"]
    for u in range(n_users):
        k = 1 + u % 12  # some users with < 3 interactions
        for it in rng.choice(n_items, size=k, replace=False):
            lines.append(f"u{u},{it + 100},{rng.integers(0, 5)},{rng.integers(1, 6)}")
    (folder / "log.csv").write_text("\n".join(lines) + "\n")
    return {"name": "toy", "format": "csv", "source": "toy", "train_file": "log.csv", "user_col": "uid",
            "item_col": "iid", "time_col": "ts", "rating_col": "stars", "sep": ",", "num_eval_negatives": 5}


def _check_split(s: ImplicitSplit) -> None:
    n = s.n_items
    train, val, test = (pairs(s.train_users, s.train_items, n), pairs(s.val_users, s.val_items, n),
                        pairs(s.test_users, s.test_items, n))
    assert len(train) == len(s.train_users)
    assert not (test & train) and not (test & val) and not (val & train)
    assert len(np.unique(s.val_users)) == len(s.val_users)
    assert s.val_negatives.shape == (len(s.val_users), s.val_negatives.shape[1])
    indptr, indices = s.all_positives_csr()
    for users, negs in ((s.val_users, s.val_negatives), (s.test_users, s.test_negatives)):
        neg_pairs = users[:, None].astype(np.int64) * n + negs
        assert not np.isin(neg_pairs, indices.astype(np.int64) + np.repeat(np.arange(s.n_users), np.diff(indptr)) * n).any()
        srt = np.sort(negs, axis=1)
        assert (srt[:, 1:] != srt[:, :-1]).all()


def test_csv_split_rules(tmp_path):
    cfg = _write_csv(tmp_path)
    s = build_split(cfg, tmp_path, tmp_path / "cache", seed=3)
    _check_split(s)
    counts = np.bincount(np.concatenate([s.train_users, s.val_users, s.test_users]), minlength=s.n_users)
    eligible = np.flatnonzero(counts >= 3)
    assert np.array_equal(np.sort(s.val_users), eligible) and np.array_equal(np.sort(s.test_users), eligible)
    assert s.user_ids.dtype.kind == "U" and s.item_ids.dtype == np.int64
    assert list(s.item_ids) == sorted(s.item_ids)
    s_min = build_split({**cfg, "min_rating": 4}, tmp_path, tmp_path / "cache", seed=3)
    assert len(s_min.train_users) + len(s_min.val_users) + len(s_min.test_users) < len(s.train_users) + 2 * len(
        s.val_users)


def test_cache_hit_and_identical(tmp_path, monkeypatch):
    cfg = _write_csv(tmp_path)
    calls = []
    real = splits_mod._compute_split
    monkeypatch.setattr(splits_mod, "_compute_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    a = build_split(cfg, tmp_path, tmp_path / "cache", seed=0)
    b = build_split(cfg, tmp_path, tmp_path / "cache", seed=0)
    assert len(calls) == 1
    assert len(list((tmp_path / "cache" / "splits").glob("*.npz"))) == 1
    for key in splits_mod._ARRAYS:
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
    assert (a.n_users, a.n_items, a.name, a.checksum) == (b.n_users, b.n_items, b.name, b.checksum)
    build_split(cfg, tmp_path, tmp_path / "cache", seed=1)  # another seed -> another cache entry
    assert len(calls) == 2


@pytest.mark.realdata
def test_ml100k_split_and_negatives(tmp_path):
    root = need("ml-100k")
    s = build_split(ML100K, root, tmp_path / "c1", seed=0)
    assert (s.n_users, s.n_items) == (943, 1682)
    assert len(s.val_users) == len(s.test_users) == 943  # every ML-100K user has >= 20 ratings
    assert len(s.train_users) == 100_000 - 2 * 943
    assert s.test_negatives.shape == (943, 99)
    _check_split(s)
    same = build_split(ML100K, root, tmp_path / "c2", seed=0)
    other = build_split(ML100K, root, tmp_path / "c2", seed=1)
    assert np.array_equal(s.test_negatives, same.test_negatives) and np.array_equal(s.val_items, same.val_items)
    assert not np.array_equal(s.test_negatives, other.test_negatives)
    assert np.array_equal(s.test_items, other.test_items)  # timestamps decide, not the seed
    assert len(s.checksum) == 64


@pytest.mark.realdata
def test_ml1m_loo_presplit(tmp_path):
    root = need("ml-1m-loo")
    cfg = {"name": "ml-1m-loo", "format": "csv", "source": "ml-1m-loo", "train_file": "train.tsv",
           "test_file": "test.tsv", "user_col": "user_id", "item_col": "item_id"}
    s = build_split(cfg, root, tmp_path, seed=0)
    assert (s.n_users, s.n_items) == (6040, 3706)
    assert len(s.test_users) == 6040 and len(s.val_users) == 6040
    assert len(s.train_users) == 994_169 - 6040
    n = s.n_items
    assert not (pairs(s.val_users, s.val_items, n) & pairs(s.test_users, s.test_items, n))
    assert not np.isin(s.val_users * n + s.val_items, s.train_users * n + s.train_items).any()


@pytest.mark.realdata
def test_ncf_format_uses_published_negatives(tmp_path):
    src = need("ncf-ml-1m") / "ncf-ml-1m"
    folder = tmp_path / "ncf-ml-1m"
    folder.mkdir()
    for name in ("ml-1m.test.rating", "ml-1m.test.negative"):
        (folder / name).write_bytes((src / name).read_bytes())
    rng = np.random.default_rng(0)
    rows = [f"{u}\t{it}\t4\t{t}" for u in range(6040) for t, it in enumerate(rng.choice(3706, 3, replace=False))]
    (folder / "ml-1m.train.rating").write_text("\n".join(rows) + "\n")
    s = build_split({"name": "ncf", "format": "ncf", "source": "ncf-ml-1m", "ncf_prefix": "ml-1m"},
                    tmp_path, tmp_path / "cache", seed=0)
    assert (s.n_users, s.n_items) == (6040, 3706) and len(s.test_users) == 6040
    assert s.test_negatives.shape == (6040, 99) and s.n_test_item_in_negatives == 156
    assert np.array_equal(s.item_ids, np.arange(3706))  # NCF ids are already 0-based indices
    n = s.n_items
    assert not (pairs(s.val_users, s.val_items, n) & pairs(s.test_users, s.test_items, n))


def _presplit_with_negatives(tmp_path: Path, ids: str = "u") -> tuple[dict, list[list[str]]]:
    """A csv train/test pair and a test.negative file in NCF's layout (string user ids, integer items)."""
    folder = tmp_path / "own"
    folder.mkdir()
    train = [f"{ids}{u}\t{10 + (u + k) % 20}" for u in range(12) for k in range(5)]
    test = [(f"{ids}{u}", 10 + (u + 7) % 20) for u in range(12)]
    negs = [[str(10 + (u + 9 + k) % 20) for k in range(4)] for u in range(12)]
    (folder / "train.tsv").write_text("user\titem\n" + "\n".join(train) + "\n")
    (folder / "test.tsv").write_text("user\titem\n" + "\n".join(f"{u}\t{i}" for u, i in test) + "\n")
    (folder / "test.negative").write_text("".join(f"({u},{i})\t" + "\t".join(n) + "\n"
                                                  for (u, i), n in zip(test, negs)))
    return {"name": "own", "format": "csv", "source": "own", "train_file": "train.tsv", "test_file": "test.tsv",
            "test_negatives_file": "test.negative", "num_eval_negatives": 3}, negs


def test_csv_test_negatives_file_is_used_as_given(tmp_path):
    cfg, negs = _presplit_with_negatives(tmp_path)
    s = build_split(cfg, tmp_path, tmp_path / "cache", seed=0)
    assert s.item_ids.dtype == np.int64                                     # integer items stay integers
    got = {str(s.user_ids[u]): [str(x) for x in s.item_ids[row]] for u, row in zip(s.test_users, s.test_negatives)}
    assert got == {f"u{u}": negs[u] for u in range(12)}                   # the file's negatives, in its order
    assert s.test_negatives.shape == (12, 4) and s.val_negatives.shape[1] == 3   # validation still sampled
    sampled = build_split({**cfg, "test_negatives_file": None}, tmp_path, tmp_path / "cache", seed=0)
    assert sampled.test_negatives.shape == (12, 3)


def test_csv_test_negatives_file_errors(tmp_path):
    from recsys.errors import ConfigError

    cfg, _ = _presplit_with_negatives(tmp_path)
    with pytest.raises(ConfigError, match="needs format 'csv' with a test_file"):
        build_split({**cfg, "test_file": None}, tmp_path, tmp_path / "cache", seed=0)
    neg = tmp_path / "own" / "test.negative"
    lines = neg.read_text().splitlines()
    neg.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")   # rows 2 and 3 swapped
    with pytest.raises(ConfigError, match=r"not aligned with test.tsv: 12 vs 12 rows, first difference at row 2"):
        build_split(cfg, tmp_path, tmp_path / "cache", seed=0)
    neg.write_text("\n".join([lines[0] + "\t11", *lines[1:]]) + "\n")
    with pytest.raises(ConfigError, match="different numbers of negatives"):
        build_split(cfg, tmp_path, tmp_path / "cache", seed=0)
    neg.write_text("\n".join(lines) + "\n")
    test = tmp_path / "own" / "test.tsv"
    rows = test.read_text().splitlines()
    test.write_text("\n".join([rows[0], rows[1] + "\t5", *rows[2:]]) + "\n")   # row 1 has 3 columns: skipped
    with pytest.raises(ConfigError, match="bad lines were skipped, so test.negative can no longer be matched"):
        build_split({**cfg, "bad_lines": "skip"}, tmp_path, tmp_path / "cache", seed=0)


def test_numpy_dedupe_and_order_match_pandas_and_lexsort():
    """The vectorised _dedupe / _lex_order give pandas' stable sort + drop_duplicates(keep="last") and np.lexsort
    exactly (rows and order), with duplicate pairs, tied timestamps, negative ids and no timestamps."""
    import pandas as pd

    from recsys.data.splits import _dedupe, _lex_order

    rng = np.random.default_rng(1)
    for trial in range(60):
        n = int(rng.integers(0, 300))
        df = pd.DataFrame({"user": rng.integers(-3, 20, n), "item": rng.integers(5, 30, n),
                           "timestamp": rng.integers(-5, 10, n)})
        if trial % 3 == 0:
            df = df.drop(columns="timestamp")
        ref = df.sort_values("timestamp", kind="stable") if "timestamp" in df else df
        pd.testing.assert_frame_equal(_dedupe(df), ref.drop_duplicates(["user", "item"], keep="last")
                                      .reset_index(drop=True))
        u, k, i = rng.integers(0, 10, n), rng.integers(-4, 6, n), rng.integers(0, 8, n)
        assert np.array_equal(_lex_order(u, k, i), np.lexsort((i, k, u)))
    big = np.array([0, 2 ** 40]), np.array([0, 2 ** 40]), np.array([3, 0])   # does not pack into 63 bits: lexsort
    assert np.array_equal(_lex_order(*big), np.lexsort(big[::-1]))
