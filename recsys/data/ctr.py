"""Data for CTR models (DeepFM): MovieLens side features joined to an implicit split, and the Criteo format.

MovieLens (``movielens`` / ``csv`` data configs, e.g. ``ml-1m-loo``, ``ml-100k``): the interactions go through
``recsys.data.splits.build_split`` exactly as for NCF (same split, same 99 evaluation negatives), and each user / item
gets side features from the GroupLens files next to the ratings (ML-1M ``users.dat`` / ``movies.dat``; ML-100K ``u.user``
/ ``u.item``): categorical user id, gender, age group, occupation, zip prefix; item id, release year; multi-hot genres.
Value 0 of every field means unknown.

Criteo (``format: criteo``; keys below, unknown keys rejected): ``label, I1..I13, C1..C26`` rows (the Kaggle
``train.txt`` is tab-separated without header; the ``criteo-10k`` sample is a CSV with header). Counts are
log-transformed (sign(x) log(1 + |x|), missing = 0); categories seen fewer than ``min_count`` times in the training rows
are bucketed into one "rare" id (1) per field, missing values get id 0. Rows are split at random (seeded) into
train / validation / test.

================ ========================================================================================================
``file``         the data file inside ``source`` (required).
``sep``          field separator (default ``,``); ``header``: true when the first row names the columns (default true).
``min_count``    int >= 1 (default 10): rarer categories share the rare id.
``val_fraction`` / ``test_fraction``: fractions of rows (default 0.1 each). ``max_rows``: read only the first n rows.
================ ========================================================================================================
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.data.ctr_table import feature_frame, encode_categories
from recsys.data.sources import DataNotFoundError, find_file, resolve_files, sha256_files
from recsys.data.validate import check_bad_lines, read_table
from recsys.errors import ConfigError

CRITEO_KEYS = {"name": None, "format": None, "source": None, "file": None, "sep": ",", "header": True,
               "min_count": 10, "val_fraction": 0.1, "test_fraction": 0.1, "max_rows": None, "bad_lines": "error"}
INFO_KEYS = frozenset({"description", "family", "task"})
N_DENSE, N_CAT = 13, 26
ML1M_AGES = (1, 18, 25, 35, 45, 50, 56)


# ------------------------------------------------------------------------------------------------------ MovieLens
@dataclass(eq=False)
class SideFeatures:
    """Per-user and per-item feature ids (0 = unknown) aligned with a split's user / item indices."""

    user_table: np.ndarray            # (n_users, n_user_fields) int64
    item_table: np.ndarray            # (n_items, n_item_fields) int64
    item_bags: np.ndarray             # (n_items, n_bags, bag_len) int64, 0-padded, ids 1..V
    field_dims: list[int]
    bag_dims: list[int]
    field_names: list[str] = field(default_factory=list)


def _vocab(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Ids 1..V for the distinct non-missing values (missing / '' -> 0) and the field size V + 1."""
    s = pd.Series(values, dtype="object")
    missing = s.isna() | (s.astype(str) == "")
    codes, uniques = pd.factorize(s.where(~missing, None), sort=True)
    return np.where(codes < 0, 0, codes + 1).astype(np.int64), len(uniques) + 1


def _age_group(age: np.ndarray) -> np.ndarray:
    """ML-100K ages in years -> ML-1M's age-group codes (1, 18, 25, 35, 45, 50, 56)."""
    edges = np.array([18, 25, 35, 45, 50, 56])
    return np.asarray(ML1M_AGES)[np.searchsorted(edges, age, side="right")]


def _read_users(folder: Path) -> pd.DataFrame:
    if (p := find_file(folder, "users.dat")) is not None:
        df = pd.read_csv(p, sep="::", engine="python", header=None, encoding="latin-1",
                         names=["user", "gender", "age", "occupation", "zip"])
    elif (p := find_file(folder, "u.user")) is not None:
        df = pd.read_csv(p, sep="|", header=None, encoding="latin-1", names=["user", "age", "gender", "occupation", "zip"])
        df["age"] = _age_group(df["age"].to_numpy())
    else:
        raise DataNotFoundError(f"no user side features in {folder}: expected users.dat (ML-1M) or u.user (ML-100K)")
    df["zip"] = df["zip"].astype(str).str[:2]
    return df


def _year(title_or_date: pd.Series) -> pd.Series:
    return title_or_date.astype(str).map(lambda s: (re.findall(r"(\d{4})", s) or [None])[-1])


def _read_items(folder: Path) -> tuple[pd.DataFrame, list[str]]:
    """(frame with item, year, genres as a list of genre names) and the genre vocabulary."""
    if (p := find_file(folder, "movies.dat")) is not None:
        df = pd.read_csv(p, sep="::", engine="python", header=None, encoding="latin-1", names=["item", "title", "g"])
        df["year"] = _year(df["title"])
        df["genres"] = df["g"].astype(str).str.split("|")
    elif (p := find_file(folder, "u.item")) is not None:
        raw = pd.read_csv(p, sep="|", header=None, encoding="latin-1")
        names = [ln.split("|")[0] for ln in (folder / "u.genre").read_text(encoding="latin-1").splitlines()
                 if ln.strip()] if (folder / "u.genre").exists() else [f"g{i}" for i in range(19)]
        flags = raw.iloc[:, 5:5 + len(names)].to_numpy().astype(bool)
        df = pd.DataFrame({"item": raw[0], "year": _year(raw[2].fillna(""))})
        df["genres"] = [[n for n, f in zip(names, row) if f] for row in flags]
    else:
        raise DataNotFoundError(f"no item side features in {folder}: expected movies.dat (ML-1M) or u.item (ML-100K)")
    vocab = sorted({g for gs in df["genres"] for g in gs if g})
    return df, vocab


def side_feature_folder(source: str, data_dir: Any, cache_dir: Any) -> Path:
    """The folder with the side-feature files of MovieLens data ``source`` (``ml-1m`` for ``ml-1m-half``)."""
    for name in (source, "ml-1m" if source.startswith("ml-1m") else None):
        if name is None:
            continue
        for req in (["users.dat", "movies.dat"], ["u.user", "u.item"]):
            try:
                return resolve_files(name, data_dir, cache_dir, req, download=False)
            except DataNotFoundError:
                pass
    raise DataNotFoundError(f"DeepFM on data source '{source}' needs MovieLens side features: users.dat + movies.dat "
                            f"(ML-1M) or u.user + u.item (ML-100K) in the '{source}' folder under the data root.")


def movielens_side_features(folder: Path, user_ids: np.ndarray, item_ids: np.ndarray) -> SideFeatures:
    """Side-feature ids of the split's users (``user_ids[k]`` = raw id of index k) and items."""
    users = _read_users(folder).set_index("user").reindex(pd.Index(np.asarray(user_ids, dtype=np.int64)))
    items, genres = _read_items(folder)
    items = items.set_index("item").reindex(pd.Index(np.asarray(item_ids, dtype=np.int64)))
    cols, dims = [np.arange(len(user_ids))], [len(user_ids)]
    for c in ("gender", "age", "occupation", "zip"):
        ids, v = _vocab(users[c].to_numpy())
        cols.append(ids)
        dims.append(v)
    year_ids, year_v = _vocab(items["year"].to_numpy())
    gid = {g: i + 1 for i, g in enumerate(genres)}
    lists = [[gid[g] for g in gs if g in gid] if isinstance(gs, list) else [] for gs in items["genres"]]
    bag_len = max(1, max((len(x) for x in lists), default=1))
    bags = np.zeros((len(item_ids), 1, bag_len), dtype=np.int64)
    for r, x in enumerate(lists):
        bags[r, 0, :len(x)] = x
    return SideFeatures(user_table=np.stack(cols, 1), item_table=np.stack([np.arange(len(item_ids)), year_ids], 1),
                        item_bags=bags, field_dims=dims + [len(item_ids), year_v], bag_dims=[len(genres)],
                        field_names=["user", "gender", "age", "occupation", "zip2", "item", "year"])


# --------------------------------------------------------------------------------------------------------- Criteo
@dataclass(eq=False)
class CTRTable:
    """Encoded rows of a CTR log: categorical ids, transformed dense values, labels, and the row split."""

    name: str
    checksum: str
    cat: np.ndarray           # (N, n_cat [+ n_bags * bag_len]) int64, per-field ids: 0 missing, 1 rare/unseen,
    #                           2.. frequent; multi-hot fields' padded ids follow the categorical ones (DeepFM splits them)
    dense: np.ndarray         # (N, n_dense) float32
    labels: np.ndarray        # (N,) float32
    field_dims: list[int]
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    bag_dims: list[int] = field(default_factory=list)
    bag_len: int = 0
    split_rule: str = ""
    skipped_lines: int = 0


def parse_criteo_cfg(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Check a ``format: criteo`` data config (no I/O); defaults filled in."""
    raw = dict(data_cfg)
    unknown = sorted(k for k in raw if k not in CRITEO_KEYS and k not in INFO_KEYS)
    if unknown:
        raise ConfigError(f"data config (format criteo): unknown key(s) {unknown}; allowed keys: {sorted(CRITEO_KEYS)}.")
    cfg = {k: (raw[k] if raw.get(k) is not None else v) for k, v in CRITEO_KEYS.items()}
    for key in ("name", "source", "file"):
        if not cfg[key]:
            raise ConfigError(f"data config (format criteo): missing required key 'data.{key}'.")
    mc = cfg["min_count"]
    if isinstance(mc, bool) or not isinstance(mc, int) or mc < 1:
        raise ConfigError(f"data.min_count={mc!r}: must be an integer >= 1.")
    vf, tf = cfg["val_fraction"], cfg["test_fraction"]
    for key, v in (("val_fraction", vf), ("test_fraction", tf)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
            raise ConfigError(f"data.{key}={v!r}: must be a number in (0, 1).")
    if vf + tf >= 1.0:
        raise ConfigError(f"data.val_fraction + data.test_fraction = {vf + tf}: must be < 1 (rows left to train on).")
    check_bad_lines(cfg["bad_lines"])
    return cfg


def log_transform(x: np.ndarray) -> np.ndarray:
    """sign(x) * log(1 + |x|), missing (NaN) -> 0: heavy-tailed counts on a scale an embedding can be multiplied by."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)
    return (np.sign(x) * np.log1p(np.abs(x))).astype(np.float32)


def bucket_categories(col: pd.Series, train_rows: np.ndarray, min_count: int) -> tuple[np.ndarray, int]:
    """Ids of one categorical column: 0 missing, 1 rare (< min_count in training rows) or unseen, 2.. frequent."""
    return encode_categories(col, np.asarray(train_rows), min_count)


def read_criteo(cfg: Mapping[str, Any], data_dir: Any, cache_dir: Any, seed: int) -> CTRTable:
    """Encode a Criteo-format file (see the module docstring); read and validated by pyarrow."""
    folder = resolve_files(cfg["source"], data_dir, cache_dir, [cfg["file"]], download=False)
    path = find_file(folder, cfg["file"])
    names = ["label"] + [f"I{i}" for i in range(1, N_DENSE + 1)] + [f"C{i}" for i in range(1, N_CAT + 1)]
    t = read_table(path, sep=cfg["sep"], header=cfg["header"], n_cols=None if cfg["header"] else len(names),
                   bad_lines=cfg["bad_lines"], max_rows=cfg["max_rows"],
                   expected="label, I1..I13, C1..C26", names=None if cfg["header"] else names)
    missing = [c for c in names if c not in t.frame.columns]
    if missing:
        raise ConfigError(f"{path}: Criteo columns {missing[:5]}... not found; columns found: "
                          f"{list(t.frame.columns)[:8]}... (data.sep={cfg['sep']!r}, data.header={cfg['header']}).")
    gen = {"cat_cols": names[1 + N_DENSE:], "multi_cols": [], "num_cols": names[1:1 + N_DENSE]}
    df = t.columns({"label": ("label", "label", "label")}, keep=feature_frame(t, gen))
    n = len(df)
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(round(cfg["test_fraction"] * n)), int(round(cfg["val_fraction"] * n))
    test_idx, val_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:n_test + n_val]), np.sort(perm[n_test + n_val:])
    cats, dims = [], []
    for c in names[1 + N_DENSE:]:
        ids, v = encode_categories(df[f"c:{c}"], train_idx, int(cfg["min_count"]))
        cats.append(ids)
        dims.append(v)
    dense = np.stack([log_transform(df[f"n:{c}"].to_numpy()) for c in names[1:1 + N_DENSE]], 1)
    return CTRTable(cfg["name"], sha256_files([path]), np.stack(cats, 1), dense,
                    df["label"].to_numpy(dtype=np.float32), dims, train_idx, val_idx, test_idx,
                    split_rule=f"random rows (seed={seed}): test = {cfg['test_fraction']:g}, validation = "
                               f"{cfg['val_fraction']:g}", skipped_lines=t.skipped)


__all__ = ["SideFeatures", "CTRTable", "movielens_side_features", "side_feature_folder", "parse_criteo_cfg",
           "read_criteo", "log_transform", "bucket_categories"]
