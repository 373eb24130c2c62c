"""Dataset resolution: local folders, offline failures, checksums, download + extraction, config validation."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from recsys.data import config as data_config
from recsys.data import sources
from recsys.data.sources import ChecksumMismatchError, DataNotFoundError, DatasetSpec, resolve_files, sha256_files
from recsys.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("RECSYS_DATA_DIR", raising=False)
    monkeypatch.delenv("RECSYS_CACHE_DIR", raising=False)


def test_errors_are_config_errors():
    assert issubclass(DataNotFoundError, ConfigError) and issubclass(ConfigError, ValueError)
    assert issubclass(ChecksumMismatchError, ConfigError)


def test_registry_has_real_urls_and_checksums():
    for name in ("ml-100k", "ml-1m", "ml-20m", "ml-25m", "ml-latest-small"):
        spec = sources.REGISTRY[name]
        assert spec.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        assert spec.sha256 is None or len(spec.sha256) == 64


def test_data_dir_wins_then_cache(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    (cache / "ml-100k").mkdir(parents=True)
    (cache / "ml-100k" / "u.data").write_text("1\t1\t1\t1\n")
    assert resolve_files("ml-100k", data, cache, ["u.data"]) == cache / "ml-100k"
    (data / "ml-100k").mkdir(parents=True)
    (data / "ml-100k" / "u.data").write_text("1\t1\t1\t1\n")
    assert resolve_files("ml-100k", data, cache, ["u.data"]) == data / "ml-100k"


def test_gz_and_alternatives_satisfy(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "ratings.dat.gz").write_bytes(b"")
    assert resolve_files("x", tmp_path, tmp_path / "c", ["u.data|ratings.dat"]) == tmp_path / "x"


def test_offline_raises_helpful_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    data, cache = tmp_path / "data", tmp_path / "cache"
    with pytest.raises(DataNotFoundError) as info:
        resolve_files("ml-1m", data, cache, ["ratings.dat"])
    msg = str(info.value)
    for part in ("ml-1m", "ratings.dat", str(data / "ml-1m"), str(cache / "ml-1m"),
                 "https://files.grouplens.org/datasets/movielens/ml-1m.zip", "RECSYS_DATA_DIR", "paths.data_dir",
                 "no network"):
        assert part in msg
    assert not list(cache.glob("*.part"))


def test_unregistered_dataset_is_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(DataNotFoundError, match=r"train\.tsv.*\n.*Searched.*\n.*No download"):
        resolve_files("ml-1m-loo", tmp_path, tmp_path / "c", ["train.tsv", "test.tsv"])


def _fake_zip(path: Path, top: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{top}/u.data", "1\t2\t3\t4\n")
        zf.writestr(f"{top}/u.item", "2|Movie|\n")
    return path


def test_download_verifies_and_extracts(tmp_path, monkeypatch):
    good = _fake_zip(tmp_path / "good.zip", "ml-100k")
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    monkeypatch.setitem(sources.REGISTRY, "ml-100k", DatasetSpec("ml-100k", "u.data", digest))
    monkeypatch.setattr(sources, "_fetch", lambda url, dest: dest.write_bytes(good.read_bytes()))
    cache = tmp_path / "cache"
    folder = resolve_files("ml-100k", tmp_path / "nodata", cache, ["u.data", "u.item"])
    assert folder == cache / "ml-100k"
    assert (folder / "u.data").read_text() == "1\t2\t3\t4\n"
    assert not (cache / "ml-100k.zip").exists()


def test_checksum_mismatch_deletes_download(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_fetch", lambda url, dest: dest.write_bytes(b"not the real zip"))
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumMismatchError, match=r"ml-100k\.zip.*expected sha256 50d2a982"):
        resolve_files("ml-100k", tmp_path / "nodata", cache, ["u.data"])
    assert not (cache / "ml-100k.zip").exists()
    assert not (cache / "ml-100k").exists()


def test_missing_checksum_warns(tmp_path, caplog):
    path = tmp_path / "f.zip"
    path.write_bytes(b"x")
    with caplog.at_level("WARNING"):
        sources.verify_sha256(path, None)
    assert "UNVERIFIED" in caplog.text and path.exists()


def test_sha256_files_order_independent(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("a")
    b.write_text("b")
    assert sha256_files([a, b]) == sha256_files([b, a])
    before = sha256_files([a, b])
    b.write_text("B")
    assert sha256_files([a, b]) != before


@pytest.mark.parametrize("cfg, pattern", [
    ({"name": "x", "format": "parquet", "source": "x"}, r"data\.format='parquet'.*movielens.*csv.*ncf"),
    ({"name": "x", "source": "x"}, r"data\.format"),
    ({"name": "x", "format": "csv", "source": "x"}, r"train_file"),
    ({"name": "x", "format": "ncf", "source": "x"}, r"ncf_prefix"),
    ({"name": "x", "format": "movielens", "source": "ml-100k", "min_ratings": 4}, r"min_ratings.*allowed keys"),
    ({"name": "x", "format": "movielens", "source": "ml-100k", "num_eval_negatives": 0}, r"num_eval_negatives"),
    ({"name": "x", "format": "csv", "source": "x", "train_file": "t", "min_rating": 4}, r"rating_col"),
])
def test_bad_data_configs(cfg, pattern):
    with pytest.raises(ConfigError, match=pattern):
        data_config.validate_data_cfg(cfg, check_files=False)


def test_validate_checks_files(tmp_path):
    cfg = {"name": "loo", "format": "csv", "source": "ml-1m-loo", "train_file": "train.tsv"}
    with pytest.raises(DataNotFoundError, match="train.tsv"):
        data_config.validate_data_cfg(cfg, tmp_path, tmp_path / "cache")
    # downloadable datasets validate without touching the network
    ok = data_config.validate_data_cfg({"name": "m", "format": "movielens", "source": "ml-1m"}, tmp_path, tmp_path)
    assert ok.num_eval_negatives == 99 and ok.required_files() == ["ratings.dat"]
