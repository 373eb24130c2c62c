"""A user's own CTR data for DeepFM: labelled rows with named fields (``format: ctr_csv``, CSV / TSV / Parquet) or
libFM / libFFM lines (``format: libfm``). Both become a :class:`~recsys.data.ctr.CTRTable`.

``ctr_csv`` keys (unknown keys are rejected):

==================== =================================================================================================
``file``             the rows (CSV / TSV / Parquet) inside ``source``; ``test_file``: optional test rows (else split).
``label_col``        the label column: {0,1}, {-1,1}, or any number with ``label_threshold`` (value >= it is a 1).
``cat_cols``         categorical columns (one value a row); ``multi_cols``: multi-valued columns (``a|b|c``, split on
                     ``multi_sep``, default ``|``), mean-pooled as DeepFM's multi-hot fields.
``num_cols``         numeric columns; ``num_transform``: ``log`` (sign(x) log(1+|x|), default), ``standard``
                     ((x - mean) / std of the training rows) or ``none``. Missing numbers become 0.
``min_count``        categories seen fewer times in the training rows share one "rare" id per field (default 5).
``split``            without a test file: ``random`` (seeded by ``seed``; default) or ``time`` (ordered by
                     ``time_col``, read as a number or with ``time_format``: the latest rows are test, the ones before
                     validation); ``val_fraction`` / ``test_fraction`` (default 0.1 each). The rule is the ``split`` tag.
``sep`` / ``header`` / ``max_rows`` / ``bad_lines`` as for every reader (``bad_lines: skip`` drops malformed lines).
==================== =================================================================================================

``libfm``: one row a line, ``label field:index[:value] ...`` (libFFM style; ``value`` defaults to 1). A field with one
index a row becomes a categorical field (its index is the category); a field with several indices in some row becomes
a multi-hot field; a field with a single index throughout and values other than 1 becomes a numeric field (its value,
with ``num_transform``, default ``none``). Labels as above. Classic libFM lines without fields (``index:value``) are not
this format: two-part tokens are read as ``field:index``.

Ids of every categorical / multi-hot field: 0 missing (or padding), 1 rare or unseen in training, 2.. frequent values
(sorted by their text). Everything is vectorised (pandas / pyarrow), no loop over rows.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recsys.data.sampling import sorted_unique
from recsys.data.sources import find_file, resolve_files, sha256_files
from recsys.data.validate import Table, check_bad_lines, normalize_sep, read_table, to_binary_labels
from recsys.errors import ConfigError, DataError

CTR_CSV_KEYS: dict[str, Any] = {
    "name": None, "format": None, "source": None, "file": None, "test_file": None, "label_col": "label",
    "label_threshold": None, "cat_cols": [], "multi_cols": [], "multi_sep": "|", "num_cols": [], "num_transform": "log",
    "min_count": 5, "split": "random", "time_col": None, "time_format": None, "val_fraction": 0.1,
    "test_fraction": 0.1, "sep": ",", "header": True, "max_rows": None, "bad_lines": "error"}
LIBFM_KEYS: dict[str, Any] = {
    "name": None, "format": None, "source": None, "file": None, "test_file": None, "label_threshold": None,
    "num_transform": "none", "min_count": 1, "split": "random", "val_fraction": 0.1, "test_fraction": 0.1,
    "max_rows": None, "bad_lines": "error"}
INFO_KEYS = frozenset({"description", "family", "task"})
TRANSFORMS = ("log", "standard", "none")


def parse_ctr_cfg(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Check a ``ctr_csv`` / ``libfm`` data config (no I/O); defaults filled in."""
    raw = dict(data_cfg)
    fmt = raw.get("format")
    keys = CTR_CSV_KEYS if fmt == "ctr_csv" else LIBFM_KEYS
    unknown = sorted(k for k in raw if k not in keys and k not in INFO_KEYS)
    if unknown:
        raise ConfigError(f"data config (format {fmt}): unknown key(s) {unknown}; allowed keys: {sorted(keys)}.")
    cfg = {k: (raw[k] if raw.get(k) is not None else v) for k, v in keys.items()}
    for key in ("name", "source", "file"):
        if not cfg[key]:
            raise ConfigError(f"data config (format {fmt}): missing required key 'data.{key}'.")
    mc = cfg["min_count"]
    if isinstance(mc, bool) or not isinstance(mc, int) or mc < 1:
        raise ConfigError(f"data.min_count={mc!r}: must be an integer >= 1.")
    for key in ("val_fraction", "test_fraction"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
            raise ConfigError(f"data.{key}={v!r}: must be a number in (0, 1).")
    if cfg["split"] not in ("random", "time"):
        raise ConfigError(f"data.split={cfg['split']!r}: must be 'random' (seeded) or 'time' (needs data.time_col).")
    if cfg["num_transform"] not in TRANSFORMS:
        raise ConfigError(f"data.num_transform={cfg['num_transform']!r}: must be one of {list(TRANSFORMS)}.")
    check_bad_lines(cfg["bad_lines"])
    if fmt == "ctr_csv":
        if cfg["split"] == "time" and cfg["time_col"] is None:
            raise ConfigError("data.split=time needs data.time_col (the column that orders the rows).")
        cfg["sep"] = normalize_sep(raw.get("sep", cfg["sep"]))
        for key in ("cat_cols", "multi_cols", "num_cols"):
            v = cfg[key]
            cfg[key] = [v] if isinstance(v, (str, int)) else list(v)
        if not (cfg["cat_cols"] or cfg["multi_cols"] or cfg["num_cols"]):
            raise ConfigError("data=ctr_csv needs at least one feature column: data.cat_cols, data.multi_cols or "
                              "data.num_cols (e.g. \"data.cat_cols=[user,item,city]\").")
    elif cfg["split"] == "time":
        raise ConfigError("data.format=libfm has no time column: use data.split=random or a data.test_file.")
    return cfg


# ------------------------------------------------------------------------------------------------------ encoders
def _as_text(values: pd.Series) -> pd.Series:
    """Category values as text (integral floats as integers, so 3.0 and 3 are one category); missing stays NA."""
    if values.dtype.kind == "f":
        v = values.to_numpy()
        finite = v[np.isfinite(v)]
        if len(finite) and np.all(finite == np.floor(finite)):
            return values.astype("Int64").astype("string")
    s = values.astype("string")
    return s.mask(s.str.len() == 0)


def encode_categories(values: pd.Series, train_rows: np.ndarray, min_count: int) -> tuple[np.ndarray, int]:
    """Ids of one categorical column: 0 missing, 1 rare (< min_count in the training rows) or unseen, 2.. frequent
    (sorted by text); and the field size."""
    codes, uniques = pd.factorize(_as_text(values), use_na_sentinel=True)
    tr = codes[train_rows]
    counts = np.bincount(tr[tr >= 0], minlength=len(uniques))
    frequent = np.flatnonzero(counts >= min_count)
    order = np.argsort(np.asarray(uniques[frequent], dtype=str), kind="stable")
    fid = np.ones(len(uniques) + 1, dtype=np.int64)
    fid[frequent[order]] = np.arange(2, 2 + len(frequent))
    fid[-1] = 0                                    # code -1 (missing) -> id 0
    return fid[codes], len(frequent) + 2


def encode_bags(rows: np.ndarray, tokens: pd.Series, n_rows: int, train_mask: np.ndarray, min_count: int
                ) -> tuple[np.ndarray, int]:
    """(n_rows, L) ids of a multi-valued field from (row, token) pairs: 0 padding, 1 rare / unseen, 2.. frequent."""
    ids, dim = encode_categories(tokens.reset_index(drop=True), np.flatnonzero(train_mask[rows]), min_count)
    keep = ids > 0
    rows, ids = rows[keep], ids[keep]
    order = np.argsort(rows, kind="stable")
    rows, ids = rows[order], ids[order]
    starts = np.r_[0, np.flatnonzero(rows[1:] != rows[:-1]) + 1] if len(rows) else np.zeros(0, dtype=np.int64)
    pos = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    bags = np.zeros((n_rows, max(1, int(pos.max()) + 1 if len(pos) else 1)), dtype=np.int64)
    bags[rows, pos] = ids
    return bags, dim - 1          # DeepFM's bag vocabulary: ids 1..V (0 is padding)


def transform_numbers(x: np.ndarray, train_rows: np.ndarray, how: str) -> np.ndarray:
    """``log``: sign(x) log(1+|x|); ``standard``: z-score with training mean / std; missing -> 0 afterwards."""
    x = np.asarray(x, dtype=np.float64)
    if how == "log":
        x = np.sign(x) * np.log1p(np.abs(x))
    elif how == "standard":
        tr = x[train_rows]
        mu, sd = np.nanmean(tr) if np.isfinite(tr).any() else 0.0, np.nanstd(tr) if np.isfinite(tr).any() else 1.0
        x = (x - mu) / (sd if sd > 0 else 1.0)
    return np.nan_to_num(x, nan=0.0).astype(np.float32)


def split_rows(n: int, n_test_file: int, cfg: Mapping[str, Any], seed: int, times: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(train, val, test) row indices and the rule in words; rows ``n - n_test_file ..`` are a test file's rows."""
    n_main = n - n_test_file
    vf, tf = float(cfg["val_fraction"]), float(cfg["test_fraction"])
    if cfg["split"] == "time":
        order = np.argsort(times[:n_main], kind="stable")
        how = f"time-ordered by {cfg['time_col']}: the latest rows"
    else:
        order = np.random.default_rng(seed).permutation(n_main)[::-1]
        how = f"random rows (seed={seed})"
    if n_test_file:
        n_val = int(round(vf * n_main))
        test = np.arange(n_main, n)
        val, train = order[n_main - n_val:], order[:n_main - n_val]
        rule = f"test = {cfg['test_file']}; validation = {vf:g} of {cfg['file']}, {how}"
    else:
        n_test, n_val = int(round(tf * n_main)), int(round(vf * n_main))
        test, val = order[n_main - n_test:], order[n_main - n_test - n_val:n_main - n_test]
        train = order[:n_main - n_test - n_val]
        rule = f"test = {tf:g}, validation = {vf:g} of the rows: {how}"
    if min(len(train), len(val), len(test)) == 0:
        raise ConfigError(f"data={cfg['name']}: {n} rows leave an empty train / validation / test part ({rule}).")
    return np.sort(train), np.sort(val), np.sort(test), rule


def _check_both_labels(labels: np.ndarray, rows: np.ndarray, part: str, path: Path, col: Any) -> None:
    vals = np.unique(labels[rows])
    if len(vals) < 2:
        raise DataError(path, f"only label {int(vals[0]) if len(vals) else '-'} in the {part} rows",
                        "both positive and negative labels (AUC and logloss need both)", column=str(col),
                        hint="Check data.label_col / data.label_threshold, or use more rows.")


# ------------------------------------------------------------------------------------------------------ ctr_csv
def read_ctr_csv(cfg: Mapping[str, Any], data_dir: Any, cache_dir: Any, seed: int):
    """Encode a ``ctr_csv`` file (+ optional test file) into a CTRTable (see the module docstring)."""
    from recsys.data.ctr import CTRTable

    files = [f for f in (cfg["file"], cfg["test_file"]) if f]
    folder = resolve_files(cfg["source"], data_dir, cache_dir, files, download=False)
    paths = [find_file(folder, f) for f in files]
    spec: dict[str, tuple[Any, str, str]] = {"label": (cfg["label_col"], "data.label_col", "label")}
    if cfg["split"] == "time":
        spec["time"] = (cfg["time_col"], "data.time_col", "time")
    frames, skipped = [], 0
    for path in paths:
        t = read_table(path, sep=cfg["sep"], header=cfg["header"], bad_lines=cfg["bad_lines"],
                       max_rows=cfg["max_rows"])
        feats = feature_frame(t, cfg)
        out = t.columns(spec, time_format=cfg["time_format"], label_threshold=cfg["label_threshold"],
                        keep=feats)
        frames.append(out)
        skipped += t.skipped
    df = pd.concat(frames, ignore_index=True)
    n_test_file = len(frames[1]) if len(frames) > 1 else 0
    train, val, test, rule = split_rows(len(df), n_test_file, cfg, seed,
                                        df["time"].to_numpy() if "time" in df else None)
    labels = df["label"].to_numpy(dtype=np.float32)
    for part, rows in (("training", train), ("test", test)):
        _check_both_labels(labels, rows, part, paths[-1] if part == "test" else paths[0], cfg["label_col"])
    cats, dims = [], []
    for c in cfg["cat_cols"]:
        ids, d = encode_categories(df[f"c:{c}"], train, int(cfg["min_count"]))
        cats.append(ids)
        dims.append(d)
    train_mask = np.zeros(len(df), dtype=bool)
    train_mask[train] = True
    bags, bag_dims = [], []
    for c in cfg["multi_cols"]:
        s = _as_text(df[f"m:{c}"]).str.split(cfg["multi_sep"]).explode()
        s = s[s.notna() & (s.str.len() > 0)]
        b, d = encode_bags(s.index.to_numpy(dtype=np.int64), s.str.strip(), len(df), train_mask, int(cfg["min_count"]))
        bags.append(b)
        bag_dims.append(d)
    dense = [transform_numbers(df[f"n:{c}"].to_numpy(dtype=np.float64), train, cfg["num_transform"])
             for c in cfg["num_cols"]]
    return _table(CTRTable, cfg, sha256_files(paths), cats, dims, bags, bag_dims, dense, labels, train, val, test, rule,
                  skipped)


def feature_frame(t: Table, cfg: Mapping[str, Any]) -> pd.DataFrame:
    """The feature columns of a parsed file, numeric ones checked (a non-number that is not missing is an error)."""
    out = {}
    for c in cfg["cat_cols"]:
        out[f"c:{c}"] = t.column(c, "data.cat_cols").reset_index(drop=True)
    for c in cfg["multi_cols"]:
        out[f"m:{c}"] = t.column(c, "data.multi_cols").reset_index(drop=True)
    for c in cfg["num_cols"]:
        s = t.column(c, "data.num_cols")
        v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        garbage = np.isnan(v) & s.notna().to_numpy() & (s.astype("string").str.strip().str.len() > 0).to_numpy()
        if garbage.any():
            r = int(np.flatnonzero(garbage)[0])
            if t.bad_lines == "error":
                raise t.error(r, repr(s.iloc[r]), f"a number or an empty value (data.num_cols: {c!r})",
                              column=str(c))
            t.mark_bad(garbage)
        out[f"n:{c}"] = v
    return pd.DataFrame(out)


def _table(cls: Any, cfg: Mapping[str, Any], checksum: str, cats: list, dims: list, bags: list, bag_dims: list,
           dense: list, labels: np.ndarray, train: np.ndarray, val: np.ndarray, test: np.ndarray, rule: str,
           skipped: int):
    n = len(labels)
    bag_len = max((b.shape[1] for b in bags), default=0)
    bags = [np.pad(b, ((0, 0), (0, bag_len - b.shape[1]))) for b in bags]
    cat = np.concatenate([np.stack(cats, 1) if cats else np.zeros((n, 0), np.int64)] + bags, axis=1)
    dense_arr = np.stack(dense, 1) if dense else np.zeros((n, 0), np.float32)
    return cls(cfg["name"], checksum, cat.astype(np.int64), dense_arr, labels, dims, train, val, test,
               bag_dims=bag_dims, bag_len=bag_len, split_rule=rule, skipped_lines=skipped)


# -------------------------------------------------------------------------------------------------------- libfm
def _read_lines(path: Path, max_rows: int | None) -> pa.StringArray:
    """Every non-empty line of a text file as one string (pyarrow, no Python loop)."""
    if path.stat().st_size == 0:
        raise DataError(path, "an empty file", "libFM lines: label field:index[:value] ...")
    t = pacsv.read_csv(path, read_options=pacsv.ReadOptions(column_names=["line"], block_size=1 << 24),
                       parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False, escape_char=False),
                       convert_options=pacsv.ConvertOptions(column_types={"line": pa.string()}))
    lines = t.column("line").combine_chunks()
    return lines.slice(0, max_rows) if max_rows else lines


def read_libfm(cfg: Mapping[str, Any], data_dir: Any, cache_dir: Any, seed: int):
    """Encode libFM / libFFM files (``label field:index[:value] ...``) into a CTRTable."""
    from recsys.data.ctr import CTRTable

    files = [f for f in (cfg["file"], cfg["test_file"]) if f]
    folder = resolve_files(cfg["source"], data_dir, cache_dir, files, download=False)
    paths = [find_file(folder, f) for f in files]
    parts = [_parse_libfm(p, cfg) for p in paths]
    offsets = np.cumsum([0] + [len(p[0]) for p in parts])
    labels = np.concatenate([p[0] for p in parts])
    tok = pd.concat([p[1].assign(row=p[1]["row"] + o) for p, o in zip(parts, offsets)], ignore_index=True)
    skipped = sum(p[2] for p in parts)
    n = len(labels)
    train, val, test, rule = split_rows(n, len(parts[1][0]) if len(parts) > 1 else 0, cfg, seed, None)
    for part, rows in (("training", train), ("test", test)):
        _check_both_labels(labels, rows, part, paths[-1] if part == "test" else paths[0], "label")
    train_mask = np.zeros(n, dtype=bool)
    train_mask[train] = True
    cats, dims, bags, bag_dims, dense = [], [], [], [], []
    for f, g in tok.groupby("field", sort=True):
        rows = g["row"].to_numpy()
        several = len(sorted_unique(rows)) < len(rows)
        non_unit = (g["value"].to_numpy() != 1.0).any()
        if non_unit and g["index"].nunique() == 1:             # one index, real values: a numeric field
            x = np.full(n, np.nan)
            x[rows] = g["value"].to_numpy()
            dense.append(transform_numbers(x, train, cfg["num_transform"]))
        elif non_unit:
            r = int(rows[np.flatnonzero(g["value"].to_numpy() != 1.0)[0]])
            line = r - int(offsets[np.searchsorted(offsets, r, side="right") - 1]) + 1
            raise DataError(paths[np.searchsorted(offsets, r, side="right") - 1], f"field {f} with several indices "
                            "and values other than 1", "per field either one index with a value (numeric) or indices "
                            "with value 1 (categorical / multi-hot)", line=line)
        elif several:
            b, d = encode_bags(rows, g["index"], n, train_mask, int(cfg["min_count"]))
            bags.append(b)
            bag_dims.append(d)
        else:
            col = pd.Series(pd.NA, index=range(n), dtype="string")
            col.iloc[rows] = g["index"].to_numpy()
            ids, d = encode_categories(col, train, int(cfg["min_count"]))
            cats.append(ids)
            dims.append(d)
    return _table(CTRTable, cfg, sha256_files(paths), cats, dims, bags, bag_dims, dense, labels.astype(np.float32),
                  train, val, test, rule, skipped)


def _parse_libfm(path: Path, cfg: Mapping[str, Any]) -> tuple[np.ndarray, pd.DataFrame, int]:
    """(0/1 labels, tokens frame [row, field, index, value], lines skipped) of one libFM file."""
    lines = _read_lines(path, cfg["max_rows"])
    tokens = pc.utf8_split_whitespace(lines)
    n_tok = pc.list_value_length(tokens).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(tokens)
    parent = pc.list_parent_indices(tokens).to_numpy()
    first = np.r_[0, np.cumsum(n_tok)[:-1]]
    is_label = np.zeros(len(flat), dtype=bool)
    is_label[first[n_tok > 0]] = True
    label_raw = pd.Series(flat.filter(pa.array(is_label)).to_numpy(zero_copy_only=False))
    feats = flat.filter(pa.array(~is_label))
    frow = parent[~is_label]
    pieces = pc.split_pattern(feats, ":")
    n_parts = pc.list_value_length(pieces).to_numpy(zero_copy_only=False)
    field = pc.list_element(pc.if_else(pa.array(n_parts >= 2), pieces, pa.scalar(["", ""], pa.list_(pa.string()))), 0)
    padded = pc.if_else(pa.array(n_parts == 2), pc.list_slice(pieces, 0, 2), pieces)
    index = pc.list_element(pc.if_else(pa.array(n_parts >= 2), padded, pa.scalar(["", ""], pa.list_(pa.string()))), 1)
    value_s = pd.Series(pc.list_element(pc.if_else(pa.array(n_parts == 3), pieces,
                                                   pa.scalar(["", "", "1"], pa.list_(pa.string()))), 2)
                        .to_numpy(zero_copy_only=False))
    values = pd.to_numeric(value_s, errors="coerce").to_numpy(dtype=np.float64)
    label_v = pd.to_numeric(label_raw, errors="coerce").to_numpy(dtype=np.float64)
    bad_tok = ((n_parts < 2) | (n_parts > 3) | ~np.isfinite(values))
    bad_row = np.zeros(len(lines), dtype=bool)
    bad_row[frow[bad_tok]] = True
    lab_bad = ~np.isfinite(label_v)
    bad_row[np.flatnonzero(n_tok > 0)[lab_bad]] = True
    bad_row |= n_tok == 0
    t = Table(path, pd.DataFrame({"line": np.arange(len(lines))}), header=False, bad_lines=cfg["bad_lines"])
    if bad_row.any() and cfg["bad_lines"] == "error":
        r = int(np.flatnonzero(bad_row)[0])
        raise t.error(r, repr(lines[r].as_py()[:80]), "label field:index[:value] ... (a numeric label, then tokens of "
                      "2 or 3 ':'-separated parts, the value a number)",
                      hint="Set data.bad_lines=skip to drop such lines.")
    labels = to_binary_labels(t, _row_values(label_v, n_tok), bad_row, "label", cfg["label_threshold"])
    keep_tok = ~bad_row[frow]
    new_row = np.cumsum(~bad_row) - 1
    tok = pd.DataFrame({"row": new_row[frow[keep_tok]],
                        "field": field.to_numpy(zero_copy_only=False)[keep_tok],
                        "index": index.to_numpy(zero_copy_only=False)[keep_tok], "value": values[keep_tok]})
    return labels[~bad_row], tok, int(bad_row.sum())


def _row_values(label_v: np.ndarray, n_tok: np.ndarray) -> np.ndarray:
    """Label of every line (NaN for empty lines)."""
    out = np.full(len(n_tok), np.nan)
    out[n_tok > 0] = label_v
    return out


def read_ctr_table(data_cfg: Mapping[str, Any], data_dir: Any, cache_dir: Any, seed: int):
    """The CTRTable of a ``criteo``, ``ctr_csv`` or ``libfm`` data config."""
    from recsys.data.ctr import parse_criteo_cfg, read_criteo

    fmt = data_cfg.get("format")
    if fmt == "criteo":
        return read_criteo(parse_criteo_cfg(data_cfg), data_dir, cache_dir, seed)
    cfg = parse_ctr_cfg(data_cfg)
    return (read_ctr_csv if fmt == "ctr_csv" else read_libfm)(cfg, data_dir, cache_dir, seed)


__all__ = ["read_ctr_table", "parse_ctr_cfg", "read_ctr_csv", "read_libfm", "encode_categories", "encode_bags", "transform_numbers",
           "split_rows", "CTR_CSV_KEYS", "LIBFM_KEYS"]
