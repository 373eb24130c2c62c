"""The data config schema (``conf/data/*.yaml``) and its validation.

Keys (unknown keys are rejected, except the informational ones in :data:`IGNORED_KEYS`):

==================== ========================================================================================
``name``             str, required: the dataset's name in run names / tables (e.g. ``ml-1m``).
``format``           required: ``movielens`` (GroupLens u.data / ratings.dat[.gz] / ratings.csv),
                     ``csv`` (a generic CSV/TSV; e.g. ``ml-1m-loo``), ``ncf`` (the NCF paper's files).
``source``           str, required: folder name under the data root (``paths.data_dir`` / ``$RECSYS_DATA_DIR``),
                     e.g. ``ml-100k``, ``ml-1m``, ``ml-1m-half``, ``ml-1m-loo``, ``ncf-ml-1m``. GroupLens names
                     (ml-100k, ml-1m, ml-20m, ml-25m, ml-latest-small) are downloaded when absent.
``train_file``       csv: file (CSV, TSV or Parquet) of the (training) interactions, relative to the source folder. Required for csv.
``test_file``        csv, optional: a pre-split test file (used as test; validation is still taken from train).
``test_negatives_file`` csv, optional (needs ``test_file``): the test rows' own evaluation negatives, used as given
                     instead of sampled, in NCF's ``test.negative`` layout: a line per test row, in the same order,
                     ``(user,item)`` then the negative items, tab-separated (e.g. ``experiments/ncf_split.py``).
``user_col``         csv: user column (name, or 0-based position with ``header: false``). Default ``user``.
``item_col``         csv: item column. Default ``item``.
``time_col``         csv, optional: timestamp column (enables the leave-latest-out rule). Default null.
``rating_col``       csv, optional: rating column (needed by ``min_rating``). Default null.
``sep``              csv: field separator. Default ``"\\t"``; names ``tab``, ``space``, ``comma``, ``semicolon``,
                     ``pipe`` are accepted (Hydra needs ``"data.sep=';'"`` quoted; a bare ``' '`` arrives empty).
``header``           csv: whether the files have a header row. Default true.
``min_rating``       optional number: keep only interactions with rating >= this as positives; null keeps all.
``time_format``      csv, optional: how ``time_col`` is written when it is not a number: a strptime format
                     (``%Y-%m-%d``, ``%Y-%m-%d %H:%M:%S``) or ``iso8601``. Default null (numbers).
``bad_lines``        ``error`` (default: stop at the first malformed line, naming file and line) or ``skip``
                     (drop malformed lines; their count is logged as ``data/skipped_lines``).
``num_eval_negatives`` int >= 1, default 99: sampled negatives per validation/test user.
``ncf_prefix``       ncf: file prefix, e.g. ``ml-1m`` for ``ml-1m.train.rating``. Required for ncf.
==================== ========================================================================================
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recsys.data.readers import MOVIELENS_RATINGS_FILES
from recsys.data.sources import REGISTRY, DataNotFoundError, is_available, missing_message, resolve_files
from recsys.data.validate import check_bad_lines, normalize_sep
from recsys.errors import ConfigError

FORMATS = ("movielens", "csv", "ncf")
# Every format any family reads, with the models that read it (the allowed-values message lists them all).
ALL_FORMATS = {"movielens": "every model (ratings as implicit positives; DeepFM adds MovieLens side features)",
               "csv": "every model (a user's own interactions; GRU4Rec needs data.time_col)",
               "ncf": "NeuMF / GMF / MLP / DeepFM (the NCF paper's files)",
               "ctr_csv": "DeepFM (a user's own labelled rows: data=ctr_csv)",
               "libfm": "DeepFM (libFM / libFFM lines: label field:index[:value] ...)",
               "criteo": "DeepFM (Criteo's label, I1..I13, C1..C26)",
               "sessions": "GRU4Rec (session click logs: data=sessions_csv)"}


def allowed_formats() -> str:
    """The allowed-values text of ``data.format``: every format and what reads it."""
    return "; ".join(f"{k} ({v})" for k, v in ALL_FORMATS.items())
IGNORED_KEYS = frozenset({"description", "family", "task", "_target_"})


@dataclass(frozen=True)
class DataConfig:
    """A validated data config (see the module docstring for each key)."""

    name: str
    format: str
    source: str
    train_file: str | None = None
    test_file: str | None = None
    test_negatives_file: str | None = None
    user_col: str | int = "user"
    item_col: str | int = "item"
    time_col: str | int | None = None
    rating_col: str | int | None = None
    sep: str = "\t"
    header: bool = True
    min_rating: float | None = None
    num_eval_negatives: int = 99
    ncf_prefix: str | None = None
    time_format: str | None = None
    bad_lines: str = "error"

    def required_files(self) -> list[str]:
        """The files (``a|b`` = one of) that must be in the source folder."""
        if self.format == "movielens":
            spec = REGISTRY.get(self.source)
            return [spec.ratings_file] if spec else ["|".join(MOVIELENS_RATINGS_FILES)]
        if self.format == "csv":
            return [f for f in (self.train_file, self.test_file, self.test_negatives_file) if f]
        return [f"{self.ncf_prefix}.{s}" for s in ("train.rating", "test.rating", "test.negative")]

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of every key (defaults filled in): what the split cache key is computed from."""
        return dataclasses.asdict(self)


_FIELDS = {f.name for f in dataclasses.fields(DataConfig)}


def _plain(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "_metadata") and hasattr(cfg, "_content"):  # OmegaConf DictConfig, without importing omegaconf
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"data config must be a mapping of keys, got {type(cfg).__name__}.")
    return dict(cfg)


def parse_data_cfg(data_cfg: Mapping[str, Any] | DataConfig) -> DataConfig:
    """Check keys and values of a data config (no I/O) and fill in defaults."""
    if isinstance(data_cfg, DataConfig):
        return data_cfg
    raw = _plain(data_cfg)
    for key in ("name", "format", "source"):
        if raw.get(key) in (None, ""):
            raise ConfigError(f"data config: missing required key 'data.{key}'"
                              + (f" (one of {list(FORMATS)})." if key == "format" else "."))
    fmt = raw["format"]
    if fmt not in FORMATS:
        if fmt in ALL_FORMATS:
            raise ConfigError(f"data.format={fmt!r} is read by {ALL_FORMATS[fmt]}, not by this model.")
        raise ConfigError(f"data.format={fmt!r} is not supported; allowed values: {allowed_formats()}.")
    unknown = sorted(k for k in raw if k not in _FIELDS and k not in IGNORED_KEYS)
    if unknown:
        raise ConfigError(f"data config: unknown key(s) {unknown}; allowed keys: {sorted(_FIELDS)}.")
    if fmt == "csv" and not raw.get("train_file"):
        raise ConfigError("data config: format 'csv' needs 'data.train_file' (and 'data.user_col', 'data.item_col').")
    if raw.get("test_negatives_file") and (fmt != "csv" or not raw.get("test_file")):
        raise ConfigError(f"data config: test_negatives_file={raw['test_negatives_file']!r} gives the negatives of "
                          "the rows of data.test_file, so it needs format 'csv' with a test_file"
                          + (f" (format is {fmt!r}: NCF's files carry their own test.negative)." if fmt == "ncf"
                             else f" (format is {fmt!r}, test_file is {raw.get('test_file')!r})."))
    if fmt == "ncf" and not raw.get("ncf_prefix"):
        raise ConfigError("data config: format 'ncf' needs 'data.ncf_prefix' (e.g. ml-1m for ml-1m.train.rating).")
    kwargs = {k: v for k, v in raw.items() if k in _FIELDS and v is not None}
    n_neg = kwargs.get("num_eval_negatives", 99)
    if isinstance(n_neg, bool) or not isinstance(n_neg, int) or n_neg < 1:
        raise ConfigError(f"data config: num_eval_negatives must be an integer >= 1, got {n_neg!r}.")
    if "min_rating" in kwargs:
        try:
            kwargs["min_rating"] = float(kwargs["min_rating"])
        except (TypeError, ValueError):
            raise ConfigError(f"data config: min_rating must be a number or null, got {kwargs['min_rating']!r}.")
        if fmt == "csv" and kwargs.get("rating_col") is None:
            raise ConfigError("data config: min_rating is set but data.rating_col is null (the csv has no ratings).")
    if "sep" in raw:
        kwargs["sep"] = normalize_sep(raw["sep"])
    check_bad_lines(kwargs.get("bad_lines", "error"))
    if not isinstance(kwargs.get("header", True), bool):
        raise ConfigError(f"data config: header must be true or false, got {kwargs['header']!r}.")
    return DataConfig(**kwargs)


def validate_data_cfg(data_cfg: Mapping[str, Any] | DataConfig, data_dir: str | os.PathLike | None = None,
                      cache_dir: str | os.PathLike | None = None, check_files: bool = True) -> DataConfig:
    """Validate a data config before training: keys, values, and that the files exist or can be downloaded."""
    cfg = parse_data_cfg(data_cfg)
    if check_files and not is_available(cfg.source, data_dir, cache_dir, cfg.required_files()):
        # not on disk and not downloadable: raise the same message resolve_files would
        resolve_files(cfg.source, data_dir, cache_dir, cfg.required_files(), download=False)
        raise DataNotFoundError(missing_message(cfg.source, cfg.required_files(), []))  # pragma: no cover
    return cfg
