"""Dataset resolution: local data root -> cache -> download (sha256-checked), and checksums of source files.

Search order for a dataset folder ``<name>``:

1. ``<data_dir>/<name>/`` (``data_dir`` argument, i.e. config key ``paths.data_dir``),
2. ``$RECSYS_DATA_DIR/<name>/`` (when set and different from ``data_dir``),
3. ``<cache_dir>/<name>/`` (``cache_dir`` argument, default ``$RECSYS_CACHE_DIR`` or ``~/.cache/recsys``),
4. download of the GroupLens zip into ``<cache_dir>/<name>/`` (only for datasets in :data:`REGISTRY`).

A required file name ``x`` is satisfied by ``x`` or ``x.gz``; ``"a|b"`` means "one of a or b".
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from filelock import FileLock

from recsys.errors import ConfigError

log = logging.getLogger(__name__)

DATA_DIR_ENV = "RECSYS_DATA_DIR"
CACHE_DIR_ENV = "RECSYS_CACHE_DIR"
GROUPLENS_BASE = "https://files.grouplens.org/datasets/movielens"


class DataNotFoundError(ConfigError):
    """A dataset's files are neither on disk nor downloadable (offline, unknown dataset, failed download)."""


class ChecksumMismatchError(ConfigError):
    """A downloaded file's sha256 differs from the registered one; the bad file has been deleted."""


@dataclass(frozen=True)
class DatasetSpec:
    """One downloadable GroupLens dataset: its zip, checksum and the ratings file inside it."""

    name: str
    ratings_file: str
    sha256: str | None
    size_bytes: int | None = None

    @property
    def url(self) -> str:
        """Download URL of the zip."""
        return f"{GROUPLENS_BASE}/{self.name}.zip"


# sha256 and sizes of the GroupLens zips as recorded by TensorFlow Datasets (url_checksums/movielens.txt).
# ml-latest-small is re-published by GroupLens from time to time; a newer zip will fail the check (delete the
# entry's checksum, i.e. set it to None, to accept it unverified).
REGISTRY: dict[str, DatasetSpec] = {
    "ml-100k": DatasetSpec("ml-100k", "u.data",
                           "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229", 4924029),
    "ml-1m": DatasetSpec("ml-1m", "ratings.dat",
                         "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20", 5917549),
    "ml-20m": DatasetSpec("ml-20m", "ratings.csv",
                          "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3", 198702078),
    "ml-25m": DatasetSpec("ml-25m", "ratings.csv",
                          "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa", 261978986),
    "ml-latest-small": DatasetSpec("ml-latest-small", "ratings.csv",
                                   "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436", 978202),
}


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: the argument, else ``$RECSYS_CACHE_DIR``, else ``~/.cache/recsys``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recsys"


def data_roots(data_dir: str | os.PathLike | None) -> list[Path]:
    """The data roots searched, in order: ``data_dir`` then ``$RECSYS_DATA_DIR`` (deduplicated)."""
    roots: list[Path] = []
    for d in (data_dir, os.environ.get(DATA_DIR_ENV) or None):
        if d is None:
            continue
        p = Path(d).expanduser()
        if p not in roots:
            roots.append(p)
    return roots


def find_file(folder: Path, name: str) -> Path | None:
    """The file in ``folder`` satisfying ``name`` (``a|b`` alternatives, each also as ``.gz``), or None."""
    for alt in name.split("|"):
        for cand in (folder / alt, folder / (alt + ".gz")):
            if cand.is_file():
                return cand
    return None


def _has_all(folder: Path, required: Sequence[str]) -> bool:
    return folder.is_dir() and all(find_file(folder, r) is not None for r in required)


def _describe(required: Sequence[str]) -> str:
    parts = []
    for r in required:
        alts = [f"{a}[.gz]" for a in r.split("|")]
        parts.append(alts[0] if len(alts) == 1 else "one of " + " / ".join(alts))
    return ", ".join(parts)


# Sources that no download provides but a script of this repository builds from other files (what to run, and from what)
BUILT_BY = {
    "ncf-ml-1m-split": "python experiments/ncf_split.py --out <data root> (from NCF's ml-1m.test.rating / "
                       "ml-1m.test.negative in ncf-ml-1m/ and every ML-1M pair in ml-1m-loo/)",
}


def missing_message(name: str, required: Sequence[str], searched: Sequence[Path], reason: str = "") -> str:
    """A message saying which files were expected where, and how to provide them."""
    spec = REGISTRY.get(name)
    lines = [f"Dataset '{name}' not found: expected files {_describe(required)} in a folder named '{name}'."]
    lines.append("Searched: " + ", ".join(str(p) for p in searched) + ".")
    if spec is not None:
        lines.append(f"Download URL: {spec.url} (unzip it into one of those folders)." + (f" {reason}" if reason else ""))
    elif name in BUILT_BY:
        lines.append(f"No download is registered for '{name}'; build it with: {BUILT_BY[name]}.")
    else:
        lines.append(f"No download is registered for '{name}'; copy its files there yourself.")
    lines.append(f"Point the data root at the folder holding '{name}/' with the environment variable {DATA_DIR_ENV} "
                 f"or the config key paths.data_dir (e.g. paths.data_dir=/path/to/datasets).")
    return "\n".join(lines)


def resolve_files(name: str, data_dir: str | os.PathLike | None, cache_dir: str | os.PathLike | None,
                  required: Sequence[str], download: bool = True) -> Path:
    """The folder holding all ``required`` files of dataset ``name``; downloads registered datasets if needed."""
    cache_root = default_cache_dir(cache_dir)
    candidates = [root / name for root in data_roots(data_dir)] + [cache_root / name]
    for folder in candidates:
        if _has_all(folder, required):
            return folder
    spec = REGISTRY.get(name)
    if spec is None or not download:
        raise DataNotFoundError(missing_message(name, required, candidates))
    target = cache_root / name
    try:
        download_dataset(spec, cache_root)
    except (urllib.error.URLError, OSError, zipfile.BadZipFile) as exc:
        raise DataNotFoundError(missing_message(name, required, candidates, reason=f"Download failed: {exc}")) from exc
    if not _has_all(target, required):
        raise DataNotFoundError(missing_message(
            name, required, candidates, reason=f"The downloaded archive did not contain {_describe(required)}."))
    return target


def is_available(name: str, data_dir: str | os.PathLike | None, cache_dir: str | os.PathLike | None,
                 required: Sequence[str]) -> bool:
    """True when the files are on disk or the dataset is downloadable (does not touch the network)."""
    try:
        resolve_files(name, data_dir, cache_dir, required, download=False)
        return True
    except DataNotFoundError:
        return name in REGISTRY


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of one file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_files(paths: Iterable[str | os.PathLike]) -> str:
    """Combined sha256 over (file name, content sha256) of the given files, independent of their order and folder."""
    entries = []
    for p in paths:
        p = Path(p)
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _HASH_MEMO:
            _HASH_MEMO[key] = file_sha256(p)
        entries.append(f"{p.name}:{_HASH_MEMO[key]}")
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()


def _fetch(url: str, dest: Path) -> None:
    """Stream ``url`` to ``dest`` with a progress line on stderr."""
    with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0)
        done = 0
        while block := resp.read(1 << 20):
            out.write(block)
            done += len(block)
            pct = f" {100 * done / total:5.1f}%" if total else ""
            print(f"\rdownloading {url}: {done / 1e6:8.1f} MB{pct}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)


def verify_sha256(path: Path, expected: str | None) -> None:
    """Check ``path`` against ``expected``; on mismatch delete it and raise :class:`ChecksumMismatchError`."""
    if expected is None:
        log.warning("No sha256 registered for %s: its checksum is UNVERIFIED.", path.name)
        return
    actual = file_sha256(path)
    if actual != expected:
        path.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"Checksum mismatch for {path.name}: expected sha256 {expected}, got {actual}. "
            f"The corrupt or changed download was deleted; retry, or place the unzipped files yourself under "
            f"${DATA_DIR_ENV}/<name>/ (config key paths.data_dir).")


def _extract(zip_path: Path, target: Path) -> None:
    """Extract a GroupLens zip into ``target``, dropping the zip's top-level folder; refuses unsafe paths."""
    tmp = target.with_name(target.name + ".extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            parts = Path(info.filename).parts
            if info.is_dir() or len(parts) == 0:
                continue
            if parts[0] == target.name and len(parts) > 1:
                parts = parts[1:]
            if any(p in ("..", "") or Path(p).is_absolute() for p in parts):
                raise zipfile.BadZipFile(f"unsafe member path {info.filename!r} in {zip_path}")
            dest = tmp.joinpath(*parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def download_dataset(spec: DatasetSpec, cache_root: Path) -> Path:
    """Download, verify and extract ``spec`` into ``cache_root/<name>/`` (under a file lock); returns that folder."""
    cache_root.mkdir(parents=True, exist_ok=True)
    target = cache_root / spec.name
    zip_path = cache_root / f"{spec.name}.zip"
    with FileLock(str(cache_root / f"{spec.name}.lock")):
        if target.is_dir() and find_file(target, spec.ratings_file) is not None:
            return target  # another process finished it while we waited
        if not zip_path.is_file():
            part = zip_path.with_suffix(".zip.part")
            try:
                _fetch(spec.url, part)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            part.rename(zip_path)
        verify_sha256(zip_path, spec.sha256)
        _extract(zip_path, target)
        zip_path.unlink(missing_ok=True)
    return target
