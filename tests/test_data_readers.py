"""Readers against the real public files (realdata) and the generic CSV reader's errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from recsys.data.readers import read_csv_interactions, read_movielens, read_ncf, read_ncf_test
from recsys.data.sources import DataNotFoundError
from recsys.errors import ConfigError


def shared_datasets() -> Path:
    """The shared dataset root: $RECSYS_DATA_DIR, else ../shared/datasets next to the repository."""
    env = os.environ.get("RECSYS_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def need(folder: str) -> Path:
    path = shared_datasets() / folder
    if not path.is_dir():
        pytest.skip(f"real dataset folder {path} is absent (set RECSYS_DATA_DIR to the shared datasets root)")
    return path


@pytest.mark.realdata
def test_ml100k_u_data():
    df = read_movielens("ml-100k", need("ml-100k"))
    assert len(df) == 100_000
    assert df["user"].nunique() == 943 and df["item"].nunique() == 1682
    assert list(df.columns) == ["user", "item", "rating", "timestamp"]
    assert df["rating"].between(1, 5).all()


@pytest.mark.realdata
def test_ml1m_half_ratings_dat_gz():
    df = read_movielens("ml-1m-half", need("ml-1m-half"))
    assert len(df) == 487_650
    assert df["user"].nunique() == 2999
    assert df["item"].nunique() == 3615
    assert df["timestamp"].min() == 970620734 and df["timestamp"].max() == 1046388675


@pytest.mark.realdata
def test_ml1m_loo_tsv():
    folder = need("ml-1m-loo")
    train = read_csv_interactions(folder / "train.tsv", "user_id", "item_id")
    test = read_csv_interactions(folder / "test.tsv", "user_id", "item_id")
    assert len(train) == 994_169 and len(test) == 6040
    users = np.union1d(train["user"].unique(), test["user"].unique())
    items = np.union1d(train["item"].unique(), test["item"].unique())
    assert len(users) == 6040 and len(items) == 3706
    assert "timestamp" not in train.columns and "rating" not in train.columns


@pytest.mark.realdata
def test_ncf_test_files():
    test, negatives = read_ncf_test(need("ncf-ml-1m"), "ml-1m")
    assert len(test) == 6040 and negatives.shape == (6040, 99)
    assert (negatives == test["item"].to_numpy()[:, None]).any(axis=1).sum() == 156


@pytest.mark.realdata
def test_ncf_missing_train_names_file():
    with pytest.raises(DataNotFoundError, match=r"ml-1m\.train\.rating"):
        read_ncf(need("ncf-ml-1m"), "ml-1m")


@pytest.mark.realdata
def test_ncf_with_train_file_counts_quirk(tmp_path):
    src = need("ncf-ml-1m")
    for name in ("ml-1m.test.rating", "ml-1m.test.negative"):
        shutil.copy(src / name, tmp_path / name)
    (tmp_path / "ml-1m.train.rating").write_text("0\t1\t5\t100\n1\t2\t3\t200\n")
    data = read_ncf(tmp_path, "ml-1m")
    train, test, negatives = data
    assert len(train) == 2 and len(test) == 6040 and negatives.shape == (6040, 99)
    assert data.n_test_item_in_negatives == 156


def test_csv_missing_column_names_it(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("uid,iid,ts\n1,2,3\n")
    with pytest.raises(ConfigError, match=r"'item'.*columns found.*'uid', 'iid', 'ts'"):
        read_csv_interactions(path, "uid", "item", sep=",")


def test_csv_positions_without_header(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("a\tx\t5\t10\nb\ty\t3\t11\n")
    df = read_csv_interactions(path, 0, 1, time_col=3, rating_col=2, header=False)
    assert df["user"].tolist() == ["a", "b"] and df["timestamp"].tolist() == [10, 11]
    assert df["rating"].dtype == np.float32


def test_ratings_dat_format(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::10::5::100\n2::20::3::200\n", encoding="latin-1")
    df = read_movielens("ml-1m", tmp_path)
    assert df.to_dict("list") == {"user": [1, 2], "item": [10, 20], "rating": [5.0, 3.0], "timestamp": [100, 200]}


def test_ratings_csv_format(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.5,100\n")
    df = read_movielens("ml-latest-small", tmp_path)
    assert df["item"].tolist() == [10] and df["rating"].tolist() == [4.5]
