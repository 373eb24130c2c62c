"""Synthetic interaction log shaped like MovieLens-20M, for scale tests of the generic reader (``data=csv``).

Default shape: 138,493 users x 26,744 items, ~20 M unique (user, item) interactions, every user with >= 20 of them
(as in ML-20M); item popularity Zipf-like (p ~ 1 / (rank + 10)^a, ids shuffled so popularity is not id order); user
activity heavy-tailed (log-normal weights on top of the minimum); each user's timestamps strictly increasing over a
random stretch of 1995-2015. Written as a TSV with header ``user item timestamp`` (ids from 1), the default format of
``conf/data/csv.yaml`` (the generic reader reads CSV/TSV, not Parquet). Prints rows/s and the file's bytes.

    python experiments/make_synthetic.py                                 # -> data/synthetic-ml20m/interactions.tsv
    python experiments/make_synthetic.py --users 40000 --items 20000 --rows 4000000 --out data/syn40k/interactions.tsv
    python run.py data=csv data.source=synthetic-ml20m data.train_file=interactions.tsv data.time_col=timestamp

Everything is vectorised numpy (no Python loop over users or rows); written as a sampler by hand because no library
generates recommender logs with these marginals. Same seed, same file.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ML20M = {"users": 138_493, "items": 26_744, "rows": 20_000_263}
T0, T1 = 789_652_009, 1_427_784_002          # first and last timestamp of ML-20M (1995-01-09 .. 2015-03-31)
MIN_PER_USER = 20


def user_counts(rng: np.random.Generator, users: int, items: int, rows: int) -> np.ndarray:
    """Interactions per user: a floor (20, as ML-20M, or less for tiny sizes) plus log-normal shares of the rest."""
    floor = min(MIN_PER_USER, max(1, rows // users), items)
    weights = rng.lognormal(0.0, 1.2, users)  # ML-20M-like: busiest user ~10k of 26.7k items
    counts = floor + rng.multinomial(max(0, rows - floor * users), weights / weights.sum())
    return np.minimum(counts, items).astype(np.int64)


def item_probabilities(rng: np.random.Generator, items: int, a: float) -> np.ndarray:
    """Zipf-like popularity over ranks, assigned to item ids in a random order."""
    p = 1.0 / (np.arange(1, items + 1) + 10.0) ** a
    out = np.empty(items)
    out[rng.permutation(items)] = p / p.sum()
    return out


def sample_pairs(rng: np.random.Generator, counts: np.ndarray, probs: np.ndarray, rounds: int = 12) -> np.ndarray:
    """Sorted unique keys user * n_items + item with (nearly) ``counts[u]`` items per user, drawn by popularity.

    Duplicates are dropped and each user's shortfall is drawn again (heavy users on a Zipf head need several rounds;
    the last 4 draw uniformly) until under 0.01 % is missing; any rest is left out and shows in the rows printed."""
    n_items = len(probs)
    cdf = np.cumsum(probs)
    cdf[-1] = 1.0
    uniform = np.arange(1, n_items + 1) / n_items
    keys = np.empty(0, dtype=np.int64)
    want = counts.copy()
    for r in range(rounds):
        if want.sum() <= 0.0001 * counts.sum():
            break
        if r == rounds - 4:  # what is still missing is the Zipf head of heavy users: fill it from all items alike
            cdf = uniform
        users = np.repeat(np.arange(len(counts), dtype=np.int64), want)
        items = np.searchsorted(cdf, rng.random(len(users)), side="right").astype(np.int64)
        new = _sorted_unique(users * n_items + np.minimum(items, n_items - 1))
        if len(keys):
            pos = np.searchsorted(keys, new)
            seen = keys[np.minimum(pos, len(keys) - 1)] == new
            new = new[~seen]
        keys = np.sort(np.concatenate([keys, new]), kind="stable")  # timsort: a merge of two sorted runs
        want = counts - np.bincount(keys // n_items, minlength=len(counts))
    return keys


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """np.unique by sort + neighbour compare (numpy 2's hash-based np.unique is several times slower here)."""
    x = np.sort(x)
    return x[np.concatenate(([True], x[1:] != x[:-1]))] if len(x) else x


def timestamps(rng: np.random.Generator, users: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Row order (by user, then time) and strictly increasing per-user timestamps inside [T0, T1]."""
    span = rng.uniform(86_400, 3 * 365 * 86_400, n_users)              # a user is active for 1 day .. 3 years
    start = T0 + rng.uniform(0, 1, n_users) * (T1 - T0 - span - 1e6)
    frac = rng.random(len(users))
    offset = frac * span[users]
    order = np.argsort(users + frac * 0.999)       # by user, then by time; float64 keeps 30+ bits for the fraction
    u = users[order]
    first = np.searchsorted(u, u, side="left")
    rank = np.arange(len(u)) - first                                    # 0, 1, 2 ... within each user
    ts = (start[u] + offset[order]).astype(np.int64) + rank            # + rank: strictly increasing even on ties
    return order, ts


def generate(users: int, items: int, rows: int, seed: int, zipf_a: float = 1.0) -> dict[str, np.ndarray]:
    """The columns ``user``, ``item`` (ids from 1) and ``timestamp``, ordered by user then time."""
    if users < 1 or items < 1 or rows < users:
        raise SystemExit(f"make_synthetic: need users >= 1, items >= 1 and rows >= users; got users={users}, "
                         f"items={items}, rows={rows}.")
    rng = np.random.default_rng(seed)
    keys = sample_pairs(rng, user_counts(rng, users, items, rows), item_probabilities(rng, items, zipf_a))
    u, i = keys // items, keys % items
    order, ts = timestamps(rng, u, users)
    return {"user": (u[order] + 1).astype(np.int32), "item": (i[order] + 1).astype(np.int32), "timestamp": ts}


def write_tsv(cols: dict[str, np.ndarray], out: Path) -> int:
    """Write a tab-separated file with a header, atomically (temp file + rename); returns its bytes."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's recsys, also when run as a script
    from recsys.fileio import atomic_path

    with atomic_path(out) as tmp, open(tmp, "wb") as f:  # header by hand: pyarrow quotes column names
        f.write(("\t".join(cols) + "\n").encode())
        pacsv.write_csv(pa.table(cols), f, write_options=pacsv.WriteOptions(
            include_header=False, delimiter="\t", quoting_style="none", batch_size=1 << 16))
    return out.stat().st_size


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=ML20M["users"])
    ap.add_argument("--items", type=int, default=ML20M["items"])
    ap.add_argument("--rows", type=int, default=ML20M["rows"], help="interactions asked for (unique pairs kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zipf", type=float, default=1.0, help="popularity exponent a in 1 / (rank + 10)^a")
    ap.add_argument("--out", type=Path, default=Path("data/synthetic-ml20m/interactions.tsv"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cols = generate(args.users, args.items, args.rows, args.seed, args.zipf)
    t1 = time.perf_counter()
    size = write_tsv(cols, args.out)
    t2 = time.perf_counter()
    n = len(cols["user"])
    print(f"{args.out}: {n:,} rows ({n / max(args.rows, 1):.1%} of {args.rows:,} asked), "
          f"{len(np.unique(cols['user'])):,} users, {len(np.unique(cols['item'])):,} items, {size:,} bytes")
    print(f"generate {t1 - t0:.1f} s, write {t2 - t1:.1f} s: {n / (t2 - t0):,.0f} rows/s")
    print(f"use: data=csv data.source={args.out.parent.name} data.train_file={args.out.name} data.time_col=timestamp "
          f"(with paths.data_dir / RECSYS_DATA_DIR = {args.out.parent.parent})")


if __name__ == "__main__":
    main()
