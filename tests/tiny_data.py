"""Tiny copies of the shared datasets (same folder names, file names and formats, a few hundred users / sessions / rows
sampled from the real files), so documented commands run exactly as typed against a data root that loads in a moment.

Used by tests/test_docs_commands.py through the session fixture ``tiny_data_dir`` (conftest.py)."""
from __future__ import annotations

import gzip
from pathlib import Path

ML_USERS = 120          # users kept of ml-1m-loo / ml-1m (ids 1..ML_USERS)
ML100K_USERS = 60       # users kept of ml-100k: the first with at most ML100K_MAX_RATINGS ratings (GRU4Rec at its
ML100K_MAX_RATINGS = 40  # default 480 units runs on it in a multirun; its evaluation steps through each whole history)
CRITEO_ROWS = 1500      # first rows of the 10k Criteo sample (enough for min_count=10 buckets)
SESSION_LINES = (3000, 1000, 1000)   # first lines of yoochoose train_full / test / train_valid (whole sessions)


def _link(src: Path, dst: Path) -> None:
    dst.symlink_to(src.resolve())


def _head_users(src: Path, dst: Path, users: int, sep: str, header: bool) -> None:
    """Rows of ``src`` whose first field (user id) is <= ``users``; the header line is kept. The file is sorted by user
    id (ml-1m-loo, ml-1m-half), so reading stops at the first later user."""
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rt") as f, open(dst, "w") as out:
        for i, line in enumerate(f):
            if (header and i == 0) or int(line.split(sep, 1)[0]) <= users:
                out.write(line)
            else:
                break


def _whole_sessions(src: Path, dst: Path, lines: int) -> None:
    """The first sessions of ``src`` covering about ``lines`` lines (a session is never cut; header kept)."""
    with open(src) as f, open(dst, "w") as out:
        out.write(next(f))
        last = None
        for i, line in enumerate(f):
            sid = line.split("\t", 1)[0]
            if i >= lines and sid != last:
                break
            out.write(line)
            last = sid


def build_tiny_root(shared: Path, root: Path) -> Path:
    """Write the tiny data root under ``root`` from the shared datasets in ``shared``; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    # ml-100k (GroupLens u.data + side files): users 1..ML100K_USERS
    d = root / "ml-100k"
    d.mkdir()
    lines = (shared / "ml-100k" / "u.data").read_text().splitlines(keepends=True)
    counts: dict[int, int] = {}
    for line in lines:
        u = int(line.split("\t", 1)[0])
        counts[u] = counts.get(u, 0) + 1
    keep = set(sorted(u for u, n in counts.items() if n <= ML100K_MAX_RATINGS)[:ML100K_USERS])
    (d / "u.data").write_text("".join(ln for ln in lines if int(ln.split("\t", 1)[0]) in keep))
    for name in ("u.item", "u.user", "u.genre", "u.occupation", "u.info"):
        _link(shared / "ml-100k" / name, d / name)
    # ml-1m-loo (train.tsv / test.tsv with header, users.dat / movies.dat side features)
    d = root / "ml-1m-loo"
    d.mkdir()
    for name in ("train.tsv", "test.tsv"):
        _head_users(shared / "ml-1m-loo" / name, d / name, ML_USERS, "\t", header=True)
    for name in ("users.dat", "movies.dat"):
        _link(shared / "ml-1m-loo" / name, d / name)
    # ml-1m (GroupLens ratings.dat, '::'-separated): users 1..ML_USERS of ml-1m-half, which holds users 1..2999
    d = root / "ml-1m"
    d.mkdir()
    _head_users(shared / "ml-1m-half" / "ratings.dat.gz", d / "ratings.dat", ML_USERS, "::", header=False)
    for name in ("users.dat", "movies.dat"):
        _link(shared / "ml-1m" / name, d / name)
    # criteo-10k: the first CRITEO_ROWS rows (CSV with header)
    d = root / "criteo-10k"
    d.mkdir()
    with open(shared / "criteo-10k" / "criteo_sampled_data_10k.csv") as f, \
            open(d / "criteo_sampled_data_10k.csv", "w") as out:
        for i, line in enumerate(f):
            if i > CRITEO_ROWS:
                break
            out.write(line)
    # yoochoose-100k: whole sessions from the start of each split file
    d = root / "yoochoose-100k"
    d.mkdir()
    for name, n in zip(("train_full", "test", "train_valid"), SESSION_LINES):
        _whole_sessions(shared / "yoochoose-100k" / f"yoochoose-clicks-100k_{name}.txt",
                        d / f"yoochoose-clicks-100k_{name}.txt", n)
    # my-shop (the README's own-data example: clicks.tsv with columns uid, sku) from the same ml-100k users
    d = root / "my-shop"
    d.mkdir()
    with open(root / "ml-100k" / "u.data") as f, open(d / "clicks.tsv", "w") as out:
        out.write("uid\tsku\n")
        for line in f:
            u, i, *_ = line.split("\t")
            out.write(f"{u}\t{i}\n")
    return root
