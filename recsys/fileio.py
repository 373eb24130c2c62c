"""Safe file writing and safe path names: the two rules every file the harness writes follows.

Every file is written to a temp file in its own directory and renamed over the target (``os.replace`` is atomic on
one file system), so a kill or a full disk mid-write leaves the old file or none, never a truncated one that later
runs would read. Names that come from config (``data.name``, ``model.name``) are reduced to one safe path component
before they become part of a path, so no config value can write outside the folder meant for it.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path to write ``path``'s content to; on success it is renamed to ``path``, on error removed.
    The temp file has the target's own name inside a hidden temp folder beside it (same file system, so the rename
    is atomic): writers that derive something from the name (``torch.save`` names its zip records after the file,
    ``np.savez`` adds ``.npz`` when missing) write exactly the bytes they would write to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    tmp = tmp_dir / path.name
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``Path.write_text`` through a temp file + rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """``Path.write_bytes`` through a temp file + rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_csv(path: str | os.PathLike, frame, **kwargs) -> Path:
    """``DataFrame.to_csv`` through a temp file + rename."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)
    return Path(path)


def safe_name(name: object) -> str:
    """One safe path component from a config value: separators, ``..`` and other characters outside
    ``[A-Za-z0-9._+=-]`` become ``_``, and no ``..`` or leading dot remains (``'../../x'`` -> ``'____x'``)."""
    s = _UNSAFE.sub("_", str(name)).strip()
    s = re.sub(r"\.{2,}", "_", s)          # no '..' anywhere (a component '..' would climb out)
    s = s.lstrip(".") or "_"               # no hidden or empty component
    return s[:120]
