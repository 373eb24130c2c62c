"""Readers for the public interaction formats; each returns a DataFrame with ``user``, ``item`` (raw ids) and,
when the format has them, ``rating`` and ``timestamp``."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from recsys.data.sources import DataNotFoundError, find_file
from recsys.data.validate import read_table, release_arrow_memory
from recsys.errors import ConfigError

MOVIELENS_RATINGS_FILES = ("u.data", "ratings.dat", "ratings.csv")
_COLS = ["user", "item", "rating", "timestamp"]


def _read_text(path: Path, encoding: str = "latin-1") -> str:
    """File contents as text, transparently gunzipping ``*.gz``."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read().decode(encoding)
    return path.read_text(encoding=encoding)


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"user": df["user"].to_numpy(), "item": df["item"].to_numpy()})
    if "rating" in df:
        out["rating"] = df["rating"].to_numpy(dtype=np.float32)
    if "timestamp" in df:
        out["timestamp"] = df["timestamp"].to_numpy(dtype=np.int64)
    return out


def movielens_ratings_path(folder: str | os.PathLike) -> Path:
    """The ratings file of a GroupLens folder (``u.data``, ``ratings.dat[.gz]`` or ``ratings.csv[.gz]``)."""
    folder = Path(folder)
    path = find_file(folder, "|".join(MOVIELENS_RATINGS_FILES))
    if path is None:
        raise DataNotFoundError(f"No MovieLens ratings file in {folder}: expected one of "
                                + ", ".join(f"{n}[.gz]" for n in MOVIELENS_RATINGS_FILES) + ".")
    return path


def read_movielens(name: str, folder: str | os.PathLike, bad_lines: str = "error") -> pd.DataFrame:
    """Ratings of a GroupLens MovieLens release (ml-100k ``u.data``, ml-1m ``ratings.dat``, ml-20m+ ``ratings.csv``),
    validated line by line (:mod:`recsys.data.validate`); ``df.attrs["skipped_lines"]`` counts lines dropped by
    ``bad_lines="skip"``."""
    path = movielens_ratings_path(folder)
    base = path.name.removesuffix(".gz")
    cols = "user, item, rating, timestamp"
    if base == "u.data":
        t = read_table(path, sep="\t", header=False, n_cols=4, bad_lines=bad_lines, expected=cols,
                       names=["user", "item", "rating", "timestamp"], sep_key=None)
    elif base == "ratings.dat":
        # '::' is not a single-character separator: parse the same lines with a tab in its place (pyarrow, C speed).
        t = read_table(path, sep="\t", header=False, n_cols=4, bad_lines=bad_lines, expected=cols + " separated by '::'",
                       names=["user", "item", "rating", "timestamp"], source=_read_text(path).replace("::", "\t").encode(), sep_key=None)
    else:
        t = read_table(path, sep=",", header=True, bad_lines=bad_lines, sep_key=None)
        t.frame = t.frame.rename(columns={"userId": "user", "movieId": "item"})
    spec = {"user": ("user", "user id", "number"), "item": ("item", "item id", "number"),
            "rating": ("rating", "rating", "number"), "timestamp": ("timestamp", "timestamp", "time")}
    df = t.columns(spec)
    out = _typed(df.astype({"user": np.int64, "item": np.int64}))
    out.attrs["skipped_lines"] = t.skipped
    del t, df
    release_arrow_memory()  # the parsed frame lived in pyarrow's pool
    return out


def read_csv_interactions(path: str | os.PathLike, user_col: str, item_col: str, time_col: str | None = None,
                          rating_col: str | None = None, sep: str = "\t", header: bool = True,
                          time_format: str | None = None, bad_lines: str = "error") -> pd.DataFrame:
    """A user's own CSV/TSV/Parquet interaction log; columns are names (``header=True``) or 0-based positions.
    Validated (:mod:`recsys.data.validate`); ``df.attrs["skipped_lines"]`` counts lines dropped by ``bad_lines``."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"Interaction file not found: {path}.")
    t = read_table(path, sep=sep, header=header, bad_lines=bad_lines)
    spec = {"user": (user_col, "data.user_col", "id"), "item": (item_col, "data.item_col", "id")}
    if time_col is not None:
        spec["timestamp"] = (time_col, "data.time_col", "time")
    if rating_col is not None:
        spec["rating"] = (rating_col, "data.rating_col", "number")
    out = _typed(t.columns(spec, time_format=time_format))
    out.attrs["skipped_lines"] = t.skipped
    del t
    release_arrow_memory()  # the parsed frame lived in pyarrow's pool: ~0.5 GB at 19 M rows
    return out


class NCFData(NamedTuple):
    """The NCF paper's files: train/test DataFrames and the (n_test, n_neg) test negatives aligned with test rows."""

    train: pd.DataFrame | None
    test: pd.DataFrame
    negatives: np.ndarray

    @property
    def n_test_item_in_negatives(self) -> int:
        """Rows whose negatives contain the user's own test item (156 in the real ml-1m.test.negative)."""
        return count_test_item_in_negatives(self.test["item"].to_numpy(), self.negatives)


def count_test_item_in_negatives(test_items: np.ndarray, negatives: np.ndarray) -> int:
    """Number of rows of ``negatives`` that contain that row's test item."""
    return int((negatives == np.asarray(test_items)[:, None]).any(axis=1).sum())


def _ncf_path(folder: Path, prefix: str, suffix: str) -> Path:
    name = f"{prefix}.{suffix}"
    path = find_file(folder, name)
    if path is None:
        raise DataNotFoundError(f"NCF file '{name}' not found in {folder} (expected {prefix}.train.rating, "
                                f"{prefix}.test.rating, {prefix}.test.negative from the NCF repository's Data/ folder).")
    return path


def read_ncf_rating(path: Path) -> pd.DataFrame:
    """An NCF ``.rating`` file (``user  item  rating  timestamp``, tab-separated, no header)."""
    return _typed(pd.read_csv(path, sep="\t", header=None, names=_COLS, engine="c"))


def read_test_negatives(path: Path, test: pd.DataFrame, what: str) -> np.ndarray:
    """Negatives in NCF's ``test.negative`` layout (``(user,item)`` then the negative items, tab-separated, a line per
    row of ``test``), checked to be aligned with ``test`` row by row and of one width. Negative items are parsed as
    ``test``'s items (integers when those are integers, else strings)."""
    lines = [ln for ln in _read_text(path).splitlines() if ln.strip()]
    heads, rows = [], []
    for ln in lines:
        head, _, rest = ln.partition("\t")
        heads.append(head.strip().strip("()").split(","))
        rows.append(rest.split())
    widths = {len(r) for r in rows}
    if len(widths) != 1 or 0 in widths:
        raise ConfigError(f"{path}: rows have different numbers of negatives {sorted(widths)}"
                          if len(widths) > 1 else f"{path}: no negatives (expected '(user,item)<TAB>neg<TAB>neg...').")
    int_items = test["item"].dtype.kind in "iu"
    try:
        negatives = np.array(rows, dtype=np.int64 if int_items else object)
    except ValueError as exc:
        raise ConfigError(f"{path}: negative items must be integers like the items of {what} ({exc}).") from None
    if any(len(h) != 2 for h in heads):
        raise ConfigError(f"{path}: each line must start with '(user,item)'.")
    want = list(zip(test["user"].astype(str), test["item"].astype(str)))
    got = [(h[0].strip(), h[1].strip()) for h in heads]
    if got != want:
        bad = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise ConfigError(f"{path} is not aligned with {what}: {len(got)} vs {len(want)} rows, first difference "
                          f"at row {bad + 1} (each line must start with that row's (user,item)).")
    return negatives


def read_ncf_test(folder: str | os.PathLike, prefix: str) -> tuple[pd.DataFrame, np.ndarray]:
    """``<prefix>.test.rating`` and ``<prefix>.test.negative``, checked to be aligned row by row."""
    folder = Path(folder)
    test = read_ncf_rating(_ncf_path(folder, prefix, "test.rating"))
    return test, read_test_negatives(_ncf_path(folder, prefix, "test.negative"), test, f"{prefix}.test.rating")


def read_ncf(folder: str | os.PathLike, prefix: str) -> NCFData:
    """The NCF paper's ``<prefix>.train.rating``, ``.test.rating`` and ``.test.negative`` (kept exactly as published)."""
    folder = Path(folder)
    train_path = _ncf_path(folder, prefix, "train.rating")
    test, negatives = read_ncf_test(folder, prefix)
    return NCFData(read_ncf_rating(train_path), test, negatives)
