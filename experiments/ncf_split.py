"""Rebuild the NCF paper's own MovieLens-1M split (He et al. 2017) as a csv source folder, from NCF's ``test.rating``.

    python experiments/ncf_split.py --out ncf-split
    RECSYS_DATA_DIR=ncf-split python run.py experiment=ncf_paper data=ncf-ml-1m-split   # conf/data/ncf-ml-1m-split.yaml

Why: NCF's published rows (0.726 / 0.445 pre-trained, factor 32) are measured on its own held-out items. ``ml-1m-loo``
has the same sizes but holds out another item for ~1,680 of the 6,040 users: NCF holds out each user's latest rating,
and ML-1M has many ratings in the same second, among which NCF's choice follows no rule we can reproduce (checked on
users 1..2999: largest id, smallest id, first or last in file all fail for hundreds of users). NCF's train file is
all of ML-1M minus those test pairs, so the split can be rebuilt from ``ml-1m.test.rating`` and the full pair set.

NCF's item ids are not MovieLens ids (they number movies by first appearance in ``ratings.dat``). They are mapped back
to MovieIDs by, in turn:

- the full ``ratings.dat`` when given (``--ratings``: its folder; all 6,040 users): first appearance gives the
  exact map;
- else a partial map (``--item-map``: ``ncf_item_id``, ``candidate_movie_ids`` joined by ``|``), narrowed to the
  movies the user rated, then to those rated with the test row's stars and timestamp where ``--ratings`` covers the
  user (e.g. ``ml-1m-half``); a test item still ambiguous takes the smallest candidate and is counted as guessed.

Output: ``<out>/ncf-ml-1m-split/{train,test}.tsv`` (``user_id``, ``item_id``: MovieLens ids, the ``ml-1m-loo``
format), ``test.negative`` (NCF's 99 test negatives per user in MovieLens ids, NCF's layout, which the csv format reads
as ``data.test_negatives_file``) and ``split.json`` (rows, users whose test item differs from ``ml-1m-loo``'s, guessed
items, negatives exact or drawn). A negative id that the partial map leaves ambiguous becomes one of its candidate
movies that the user never rated (seeded): with the shared files, 451,602 of the 597,960 negatives are exact.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.data.readers import read_movielens, read_ncf_rating, read_test_negatives
from recsys.fileio import atomic_path

NAME = "ncf-ml-1m-split"


def candidates_from_ratings(ratings: pd.DataFrame) -> dict[int, list[int]]:
    """NCF id -> [MovieID] by first appearance in ``ratings.dat`` (``read_movielens``'s frame, in file order; exact
    when the file is complete)."""
    first = pd.unique(ratings["item"].to_numpy())
    return {k: [int(m)] for k, m in enumerate(first)}


def candidates_from_map(path: Path) -> dict[int, list[int]]:
    """NCF id -> candidate MovieIDs from a partial map file (tab-separated, with a header)."""
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return {int(k): [int(x) for x in c.split("|") if x] for k, c in zip(df["ncf_item_id"], df["candidate_movie_ids"])}


def rebuild(test_rating: Path, pairs_dir: Path, item_map: Path | None, ratings_dir: Path | None,
            test_negative: Path | None = None, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, list[list[int]],
                                                                         dict]:
    """(train, test, test negatives (a list per test row, empty without ``test_negative``), stats) of NCF's split,
    in MovieLens ids. ``ratings_dir``: a folder holding ``ratings.dat[.gz]``."""
    loo = pd.read_csv(pairs_dir / "test.tsv", sep="\t")
    pairs = pd.concat([pd.read_csv(pairs_dir / "train.tsv", sep="\t"), loo], ignore_index=True)
    if pairs.duplicated().any():
        raise ValueError(f"{pairs_dir}: duplicate (user_id, item_id) pairs; expected each ML-1M pair once")
    rated = pairs.groupby("user_id")["item_id"].apply(set).to_dict()
    ratings = read_movielens("ml-1m", ratings_dir) if ratings_dir else None
    full = ratings is not None and ratings["user"].nunique() == len(rated)
    if full:
        cand = candidates_from_ratings(ratings)
    elif item_map is not None:
        cand = candidates_from_map(item_map)
    else:
        raise ValueError("give --ratings with the full ratings.dat, or --item-map (the partial NCF item map)")
    test_rows = read_ncf_rating(test_rating)
    # movies each test row's (user, stars, second) names in ratings.dat, where it covers the user: narrows ambiguous ids
    at: dict[tuple[int, int, int], set[int]] = {}
    if ratings is not None:
        keys = test_rows.assign(user=test_rows["user"] + 1)[["user", "rating", "timestamp"]]
        hits = ratings.merge(keys, on=["user", "rating", "timestamp"])
        at = hits.groupby(["user", "rating", "timestamp"])["item"].apply(set).to_dict()
    out, guessed = [], []
    for u, i, r, ts in test_rows.itertuples(index=False):
        uid = int(u) + 1                       # NCF users are MovieLens UserID - 1
        c = [m for m in cand.get(int(i), []) if m in rated.get(uid, ())]
        if len(c) > 1 and (uid, r, ts) in at:
            c = [m for m in c if m in at[(uid, r, ts)]] or c
        if not c:
            raise ValueError(f"{test_rating}: NCF item {i} of user {u} maps to no movie that user rated")
        if len(c) > 1:
            guessed.append(uid)
        out.append((uid, min(c)))
    test = pd.DataFrame(out, columns=["user_id", "item_id"])
    held = pd.MultiIndex.from_frame(test)
    train = pairs[~pd.MultiIndex.from_frame(pairs).isin(held)].reset_index(drop=True)
    negatives, neg_stats = (map_negatives(test_negative, test_rows, test, cand, rated, seed) if test_negative
                            else ([[] for _ in range(len(test))], {}))
    differs = int(len(test) - len(test.merge(loo, on=["user_id", "item_id"])))
    stats = {"train_rows": len(train), "test_rows": len(test), "users": int(test["user_id"].nunique()),
             "item_map": "ratings.dat (exact)" if full else str(item_map),
             "test_items_guessed": len(guessed), "guessed_users": guessed,
             f"test_items_differing_from_{pairs_dir.name}": differs, **neg_stats}
    return train, test, negatives, stats


def map_negatives(path: Path, test_rows: pd.DataFrame, test: pd.DataFrame, cand: dict[int, list[int]],
                  rated: dict[int, set[int]], seed: int) -> tuple[list[list[int]], dict]:
    """NCF's ``test.negative`` (read and checked against ``test_rows``, NCF's ``test.rating``, row by row) in MovieLens
    ids, row k for ``test``'s row k. An id the map pins is exact; an ambiguous id becomes one of its candidates that
    the user never rated and that the row does not hold yet, drawn with ``seed`` (NCF drew its negatives uniformly
    among the user's unrated movies too)."""
    rng = np.random.default_rng(seed)
    out, exact, drawn, no_unrated = [], 0, 0, 0
    ncf_negatives = read_test_negatives(path, test_rows, "its test.rating")
    for ids, uid in zip(ncf_negatives.tolist(), test["user_id"]):
        row: list[int] = []
        for x in ids:
            c = cand[x]
            if len(c) == 1:
                exact += 1
                row.append(c[0])
                continue
            drawn += 1
            ok = [m for m in c if m not in rated[uid] and m not in row]
            if not ok:
                no_unrated += 1
                ok = [m for m in c if m not in row] or c
            row.append(int(ok[rng.integers(len(ok))]))
        out.append(row)
    return out, {"negatives_exact": exact, "negatives_drawn_among_candidates": drawn,
                 "negatives_without_unrated_candidate": no_unrated}


def main(argv: list[str] | None = None) -> int:
    data = Path(os.environ.get("RECSYS_DATA_DIR", ROOT.parent / "shared" / "datasets"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help=f"data root to write {NAME}/ into (point RECSYS_DATA_DIR at it)")
    ap.add_argument("--test-rating", type=Path, default=data / "ncf-ml-1m" / "ml-1m.test.rating")
    ap.add_argument("--pairs", type=Path, default=data / "ml-1m-loo",
                    help="folder with train.tsv + test.tsv holding every ML-1M (user_id, item_id) pair once")
    ap.add_argument("--item-map", type=Path, default=data / "ncf-ml-1m" / "ncf_item_id_map.partial.tsv")
    ap.add_argument("--ratings", type=Path, default=data / "ml-1m-half",
                    help="folder with ratings.dat[.gz]: the full file gives the exact item map; a part narrows ties")
    ap.add_argument("--test-negative", type=Path, default=data / "ncf-ml-1m" / "ml-1m.test.negative",
                    help="NCF's test.negative, written as test.negative in MovieLens ids (skipped when absent)")
    ap.add_argument("--seed", type=int, default=0, help="draws among an ambiguous negative id's candidates")
    args = ap.parse_args(argv)
    for p in (args.test_rating, args.pairs / "train.tsv", args.pairs / "test.tsv"):
        if not p.exists():
            ap.error(f"{p} does not exist")
    item_map = args.item_map if args.item_map.exists() else None
    ratings = args.ratings if (args.ratings / "ratings.dat").exists() or (args.ratings / "ratings.dat.gz").exists() \
        else None
    negative = args.test_negative if args.test_negative.exists() else None
    train, test, negatives, stats = rebuild(args.test_rating, args.pairs, item_map, ratings, negative, args.seed)
    dest = Path(args.out) / NAME
    dest.mkdir(parents=True, exist_ok=True)
    for name, df in (("train.tsv", train), ("test.tsv", test)):
        with atomic_path(dest / name) as tmp:
            df.to_csv(tmp, sep="\t", index=False)
    if negative:
        with atomic_path(dest / "test.negative") as tmp:
            Path(tmp).write_text("".join(f"({u},{i})\t" + "\t".join(map(str, row)) + "\n"
                                         for u, i, row in zip(test["user_id"], test["item_id"], negatives)))
    for name in ("users.dat", "movies.dat"):       # side features, for DeepFM on the same split
        if (args.pairs / name).exists():
            with atomic_path(dest / name) as tmp:
                Path(tmp).write_bytes((args.pairs / name).read_bytes())
    with atomic_path(dest / "split.json") as tmp:
        Path(tmp).write_text(json.dumps(stats, indent=1) + "\n")
    print(json.dumps({k: v for k, v in stats.items() if k != "guessed_users"}))
    run = f"data={NAME}" if negative else f"data.source={NAME} data.name={NAME}"
    print(f"written: {dest}  (RECSYS_DATA_DIR={Path(args.out).resolve()} python run.py experiment=ncf_paper {run})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
