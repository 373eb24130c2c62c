"""Read and validate one data file (CSV / TSV / Parquet) before anything is trained or logged.

Every generic reader goes through :func:`read_table` and :meth:`Table.columns`: the file is parsed by pyarrow (multi-
threaded, no Python loop over rows), then each column the config names is checked for what it must hold — ids present,
numbers numeric, times numeric or parseable with ``data.time_format``, labels in {0,1} / {-1,1} or thresholded. A problem
raises :class:`~recsys.errors.DataError` naming the file, the line (row for Parquet), what was found and what was
expected; with ``data.bad_lines: skip`` the offending rows are dropped and counted instead (the count is logged as
``data/skipped_lines``). Line numbers are physical line numbers (1-based, header included); they are worked out only on
the error path.
"""
from __future__ import annotations

import datetime
import gzip
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recsys.errors import ConfigError, DataError

BAD_LINES = ("error", "skip")
PARQUET_SUFFIXES = (".parquet", ".pq")
# Readable names for separators that are awkward to type through Hydra (a bare ' ' is stripped, ';' and '\t' need quotes).
SEP_ALIASES = {"tab": "\t", "\\t": "\t", "space": " ", "comma": ",", "semicolon": ";", "pipe": "|", "colon": ":"}
_SEP_NAMES = {"\t": "tab", " ": "space", ",": "comma", ";": "semicolon", "|": "pipe", ":": "colon"}
ISO = "iso8601"


def normalize_sep(sep: Any, key: str = "data.sep") -> str:
    """The separator a config value stands for (aliases ``tab``, ``space``, ``comma``, ``semicolon``, ``pipe``)."""
    if sep is None or sep == "":
        raise ConfigError(f"{key} is empty. A space typed as {key}=' ' reaches the config as an empty string; write "
                          f"{key}=space (other names: {sorted(SEP_ALIASES)}), or quote the whole override: "
                          f"\"{key}=';'\".")
    s = str(sep)
    return SEP_ALIASES.get(s.lower(), s)


def sep_name(sep: str) -> str:
    return f"{sep!r} ({_SEP_NAMES[sep]})" if sep in _SEP_NAMES else repr(sep)


def check_bad_lines(value: Any) -> str:
    if value not in BAD_LINES:
        raise ConfigError(f"data.bad_lines={value!r}: must be one of {list(BAD_LINES)} (error: stop at the first bad "
                          "line and name it; skip: drop bad lines and log how many as data/skipped_lines).")
    return str(value)


def is_parquet(path: str | Path) -> bool:
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


def _raw_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()


def _guess_sep(text: str, sep: str, sep_key: str | None = "data.sep") -> str:
    """A hint naming another common separator the offending line contains."""
    for other in ("\t", ",", ";", "|", " "):
        if other != sep and other in text:
            fix = f" (set {sep_key}={_SEP_NAMES[other]})" if sep_key else f" (this format is {_SEP_NAMES[sep]}-separated)"
            return (f"The line contains {sep_name(other)} separators, not {sep_name(sep)}: is the file "
                    f"{_SEP_NAMES[other]}-separated?{fix}")
    return ""


def _find_line(raw: bytes, text: str) -> int | None:
    """1-based number of the first whole line equal to ``text`` (error path only)."""
    b = text.encode("utf-8", "replace")
    if raw.startswith(b) and (len(raw) == len(b) or raw[len(b):len(b) + 1] in (b"\r", b"\n")):
        return 1
    pos = raw.find(b"\n" + b)
    while pos >= 0:
        end = pos + 1 + len(b)
        if end >= len(raw) or raw[end:end + 1] in (b"\r", b"\n"):
            return raw.count(b"\n", 0, pos + 1) + 1
        pos = raw.find(b"\n" + b, pos + 1)
    return None


@dataclass(eq=False)
class Table:
    """A parsed file: ``frame`` (every column as pyarrow read it), rows already skipped, and how to find a row's line."""

    path: Path
    frame: pd.DataFrame
    header: bool
    bad_lines: str = "error"
    skipped: int = 0
    parquet: bool = False
    sep_key: str | None = "data.sep"
    _bad: np.ndarray | None = field(default=None, repr=False)
    _lines: np.ndarray | None = field(default=None, repr=False)

    def where(self, row: int) -> dict[str, Any]:
        """``line=`` (text files, physical 1-based, header counted) or a row hint (Parquet) for an error message."""
        if self.parquet:
            return {"line": None, "hint": f"(Parquet row {row + 1})"}
        if self._lines is None:   # error path only: line numbers of the non-empty lines (pyarrow skips empty ones)
            buf = np.frombuffer(_raw_bytes(self.path), dtype=np.uint8)
            ends = np.flatnonzero(buf == 10)
            if len(buf) and buf[-1] != 10:
                ends = np.r_[ends, len(buf)]
            starts = np.r_[0, ends[:-1] + 1]
            lengths = ends - starts - (buf[np.maximum(ends - 1, 0)] == 13)
            self._lines = np.flatnonzero(lengths > 0) + 1
        k = row + int(self.header)
        return {"line": int(self._lines[k]) if k < len(self._lines) else None, "hint": ""}

    def error(self, row: int, found: str, expected: str, column: Any = None, hint: str = "") -> DataError:
        w = self.where(row)
        return DataError(self.path, found, expected, line=w["line"], column=column,
                         hint=" ".join(h for h in (w["hint"], hint) if h))

    def mark_bad(self, mask: np.ndarray) -> None:
        """Rows found bad outside :meth:`columns` (``bad_lines: skip``): dropped and counted by :meth:`columns`."""
        self._bad = mask.copy() if self._bad is None else (self._bad | mask)

    def column(self, col: Any, key: str) -> pd.Series:
        """The column named (or, without a header, numbered) ``col``; ``key`` is the config key that named it."""
        name = str(col)
        if name not in self.frame.columns:
            found = list(self.frame.columns)
            hint = _guess_sep(found[0], "", self.sep_key) if len(found) == 1 and self.header else ""
            raise DataError(self.path, f"no column {name!r} (columns found: {found[:20]}"
                            + (" ...)" if len(found) > 20 else ")"), f"a column {name!r} ({key}={col!r})"
                            + ("" if self.header else " counted from 0, the file having no header (data.header=false)"),
                            hint=hint)
        return self.frame[name]

    def columns(self, spec: Mapping[str, tuple[Any, str, str]], time_format: str | None = None,
                label_threshold: float | None = None, keep: pd.DataFrame | None = None) -> pd.DataFrame:
        """Validated columns: ``spec`` maps an output name to (column, config key, kind); kinds: ``id`` (present),
        ``number``, ``time`` (number or date string), ``label`` (0/1 after mapping). Bad rows raise, or are dropped and
        counted with ``bad_lines: skip``. Returns the output frame with the kept rows (plus the columns of ``keep``,
        a frame aligned with the file's rows)."""
        out: dict[str, Any] = {}
        bad = np.zeros(len(self.frame), dtype=bool) if self._bad is None else self._bad.copy()
        for name, (col, key, kind) in spec.items():
            s = self.column(col, key)
            if kind == "id":
                invalid = s.isna().to_numpy()
                if s.dtype.kind not in "iufb":  # only text can be blank; a number as str costs ~100 B/row at 20 M rows
                    invalid = invalid | (s.astype(str).str.strip() == "").to_numpy()
                values, expected = s, "a non-empty id"
            elif kind == "time":
                values, invalid, expected = parse_times(s, time_format)
            else:
                values = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
                invalid = ~np.isfinite(values)
                expected = "a number"
            if invalid.any():
                if self.bad_lines == "error":
                    r = int(np.flatnonzero(invalid)[0])
                    raw = s.iloc[r]
                    hint = ""
                    if kind == "time" and time_format is None:
                        hint = ("Times that are date strings need data.time_format, e.g. \"data.time_format='%Y-%m-%d'\" "
                                f"or data.time_format={ISO} (ISO dates / date-times).")
                    what = f" ({key}={col!r})" if key.startswith("data.") else f" ({key})"
                    raise self.error(r, "an empty value" if pd.isna(raw) or str(raw).strip() == "" else repr(raw),
                                     expected + what, column=str(col), hint=hint)
                bad |= invalid
            out[name] = values
        if label_spec := [n for n, (_, _, k) in spec.items() if k == "label"]:
            name = label_spec[0]
            col, key, _ = spec[name]
            out[name] = to_binary_labels(self, np.asarray(out[name], dtype=np.float64), bad, col, label_threshold)
        frame = pd.DataFrame({k: (v.to_numpy() if isinstance(v, pd.Series) else v) for k, v in out.items()})
        if keep is not None:
            frame = pd.concat([frame, keep.reset_index(drop=True)], axis=1)
        if bad.any():
            frame = frame[~bad].reset_index(drop=True)
            self.skipped += int(bad.sum())
        if len(frame) == 0:
            raise DataError(self.path, f"no usable rows ({self.skipped} skipped by data.bad_lines=skip)",
                            "at least one valid data row")
        return frame


def parse_times(s: pd.Series, time_format: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(seconds as float64, invalid mask, what was expected): numbers as they are, date strings via ``time_format``;
    ISO dates / date-times that pyarrow already recognised while parsing are taken as they are."""
    first = s.dropna().iloc[0] if s.notna().any() else None
    if pd.api.types.is_datetime64_any_dtype(s) or isinstance(first, (datetime.date, datetime.datetime)):
        t = pd.to_datetime(s, utc=True, errors="coerce")
        invalid = t.isna().to_numpy()
        secs = np.where(invalid, np.nan, (t - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64))
        return secs, invalid, "an ISO date or date-time"
    if time_format is None:
        v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        return v, ~np.isfinite(v), "a number (a timestamp)"
    fmt = "ISO8601" if str(time_format).lower() == ISO else str(time_format)
    t = pd.to_datetime(s.astype(str), format=fmt, errors="coerce", utc=True)
    invalid = t.isna().to_numpy()
    secs = np.where(invalid, np.nan, (t - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64))
    return secs, invalid, f"a time matching data.time_format={time_format!r}"


def to_binary_labels(table: Table, v: np.ndarray, bad: np.ndarray, col: Any, threshold: float | None) -> np.ndarray:
    """0/1 float32 labels: ``value >= threshold`` when a threshold is set, else values in {0,1} or {-1,1} (-1 -> 0)."""
    ok = ~bad & np.isfinite(v)
    if threshold is not None:
        return (v >= float(threshold)).astype(np.float32)
    vals = set(np.unique(v[ok]).tolist())
    if not vals <= {0.0, 1.0} and not vals <= {-1.0, 1.0}:
        odd = sorted(vals - {0.0, 1.0, -1.0})[:5] or sorted(vals)[:5]
        r = int(np.flatnonzero(ok & np.isin(v, odd))[0]) if odd else 0
        raise table.error(r, f"label {odd[0]:g} (labels seen: {sorted(vals)[:8]})",
                          "labels in {0, 1} or {-1, 1}", column=str(col),
                          hint="For ratings, set data.label_threshold (e.g. data.label_threshold=4: rating >= 4 is a "
                               "positive).")
    return (v > 0).astype(np.float32)


def release_arrow_memory() -> None:
    """Hand pyarrow's freed memory back to the OS: its allocator (mimalloc) otherwise keeps the parse buffers and the
    freed table cached, ~1.1 GB of resident memory after reading 19 M rows that no later stage reuses."""
    pa.default_memory_pool().release_unused()


def read_table(path: str | Path, sep: str = ",", header: bool = True, n_cols: int | None = None,
               bad_lines: str = "error", expected: str = "", names: Sequence[str] | None = None,
               source: Any = None, sep_key: str | None = "data.sep", max_rows: int | None = None) -> Table:
    """Parse a CSV/TSV (``.gz`` too) or Parquet file; empty files, header-only files and lines with the wrong number
    of fields are refused (or skipped and counted). ``n_cols``: fields every line must have (files without header);
    ``expected`` names them for the message; ``names`` renames the columns; ``source``: bytes to parse instead of the
    file (same lines, e.g. with a multi-character separator replaced), ``path`` still names it in messages;
    ``sep_key``: the config key that sets the separator (None for fixed formats such as ``u.data``); ``max_rows``:
    read only the first rows (streamed, the rest of the file is not parsed)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file", "a data file at this path")
    if is_parquet(path):
        try:
            frame = pq.read_table(path).to_pandas()
            frame = frame.iloc[:max_rows] if max_rows else frame
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(path, f"a file Parquet cannot read ({e})", "a Parquet file") from None
        if len(frame) == 0:
            raise DataError(path, "a Parquet file with 0 rows", "at least one data row")
        frame.columns = [str(c) for c in frame.columns]
        return Table(path, frame, header=True, bad_lines=bad_lines, parquet=True)
    size = path.stat().st_size
    if size == 0 or (size < 1 << 16 and not _raw_bytes(path).strip()):
        raise DataError(path, "an empty file", "lines of " + (expected or "data"))
    invalid: list[tuple[int, int, str]] = []

    def on_invalid(row: Any) -> str:
        invalid.append((row.expected_columns, row.actual_columns, row.text))
        return "skip"

    def _src() -> Any:
        return pa.BufferReader(source) if source is not None else path

    def _read(convert: Any) -> pa.Table:
        if not max_rows:
            return pacsv.read_csv(_src(), read_options=read_opts, parse_options=parse_opts, convert_options=convert)
        reader, batches, n = pacsv.open_csv(_src(), read_options=read_opts, parse_options=parse_opts,
                                            convert_options=convert), [], 0
        for batch in reader:
            batches.append(batch)
            n += batch.num_rows
            if n >= max_rows:
                break
        return pa.Table.from_batches(batches, schema=reader.schema).slice(0, max_rows)

    sep = normalize_sep(sep)
    read_opts = pacsv.ReadOptions(autogenerate_column_names=not header, block_size=1 << 24)
    parse_opts = pacsv.ParseOptions(delimiter=sep, invalid_row_handler=on_invalid)
    try:
        table = _read(pacsv.ConvertOptions(strings_can_be_null=True))
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            raise DataError(path, "an empty file", "lines of " + (expected or "data")) from None
        if "conversion error" not in str(e):   # a type clash between blocks: read every column as text instead
            raise DataError(path, f"a file that cannot be parsed ({e})", "delimited text")
        names0 = pacsv.read_csv(_src(), read_options=pacsv.ReadOptions(autogenerate_column_names=not header,
                                                                      block_size=1 << 16),
                                parse_options=pacsv.ParseOptions(delimiter=sep, invalid_row_handler=lambda r: "skip"),
                                ).column_names
        invalid.clear()
        table = _read(pacsv.ConvertOptions(column_types={n: pa.string() for n in names0}, strings_can_be_null=True))
    frame = table.to_pandas()
    del table
    release_arrow_memory()
    if not header:
        frame.columns = [str(i) for i in range(frame.shape[1])]
    if names is not None and len(names) == frame.shape[1]:
        frame.columns = list(names)
    t = Table(path, frame, header=header, bad_lines=bad_lines, sep_key=sep_key)
    if n_cols is not None and frame.shape[1] != n_cols and not invalid:
        first = frame.iloc[0].astype(str).str.cat(sep=sep) if len(frame) else ""
        raise t.error(0, f"{frame.shape[1]} field(s) ({first[:80]!r})",
                      f"{n_cols} fields" + (f" ({expected})" if expected else "") + f" separated by {sep_name(sep)}",
                      hint=_guess_sep(first, sep, sep_key))
    if invalid:
        if bad_lines == "error":
            exp_n, got, text = invalid[0]
            raw = _raw_bytes(path)
            line = _find_line(raw, text)
            last = line is not None and line >= raw.rstrip().count(b"\n") + 1
            hint = _guess_sep(text, sep, sep_key) or ("The last line looks truncated (the file may have been cut off "
                                                      "while being written)." if last and got < exp_n else "")
            raise DataError(path, f"{got} field(s) ({text[:80]!r})",
                            f"{exp_n} fields" + (f" ({expected})" if expected else "") + f" separated by {sep_name(sep)}",
                            line=line, hint=(hint + " " if hint else "") + "Set data.bad_lines=skip to drop such lines.")
        t.skipped = len(invalid)
    if len(frame) == 0:
        raise DataError(path, "a header line but no data rows" if header and not invalid
                        else f"no usable rows ({len(invalid)} bad line(s))", "at least one data row")
    return t


__all__ = ["Table", "read_table", "release_arrow_memory", "normalize_sep", "check_bad_lines", "parse_times", "is_parquet", "BAD_LINES",
           "SEP_ALIASES", "ISO"]
