"""Shared fixtures: where the public datasets are (``RECSYS_DATA_DIR`` or ../shared/datasets beside the checkout)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def find_shared_datasets() -> Path | None:
    env = os.environ.get("RECSYS_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "datasets")
    for c in candidates:
        if (c / "ml-100k" / "u.data").exists():
            return c.resolve()
    return None


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    d = find_shared_datasets()
    if d is None:
        pytest.skip("public datasets not found: set RECSYS_DATA_DIR or put ../shared/datasets beside the checkout")
    return d


@pytest.fixture(scope="session")
def tiny_data_dir(shared_data_dir, tmp_path_factory) -> Path:
    """A data root with tiny copies of the shared datasets (tests/tiny_data.py), built once per session."""
    from tiny_data import build_tiny_root

    return build_tiny_root(shared_data_dir, tmp_path_factory.mktemp("tiny-data"))
