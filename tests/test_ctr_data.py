"""CTR data: rare-category bucketing, the log transform, the Criteo reader on the real sample, MovieLens side features."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data.ctr import (bucket_categories, log_transform, movielens_side_features, parse_criteo_cfg,
                             read_criteo)
from recsys.errors import ConfigError


def test_bucketing_uses_training_counts_only():
    col = pd.Series(["a", "a", "b", None, "c", "c", "c", "b"])
    ids, dim = bucket_categories(col, train_rows=np.array([0, 1, 2, 3, 4]), min_count=2)
    assert dim == 3                                   # missing, rare, "a"
    assert ids.tolist() == [2, 2, 1, 0, 1, 1, 1, 1]   # b, c rare in the training rows; missing -> 0


def test_log_transform_and_config_validation():
    np.testing.assert_allclose(log_transform(np.array([0.0, np.nan, np.e - 1, -1.0])), [0, 0, 1, -np.log(2)], rtol=1e-6)
    with pytest.raises(ConfigError, match="unknown key"):
        parse_criteo_cfg({"name": "c", "format": "criteo", "source": "s", "file": "f", "bogus": 1})
    with pytest.raises(ConfigError, match="min_count"):
        parse_criteo_cfg({"name": "c", "format": "criteo", "source": "s", "file": "f", "min_count": 0})


@pytest.mark.realdata
def test_criteo_reader_on_the_real_sample(shared_data_dir, tmp_path):
    cfg = parse_criteo_cfg({"name": "criteo", "format": "criteo", "source": "criteo-10k",
                            "file": "criteo_sampled_data_10k.csv", "min_count": 10})
    t = read_criteo(cfg, shared_data_dir, tmp_path, seed=0)
    assert t.cat.shape == (9999, 26) and t.dense.shape == (9999, 13)
    assert int(t.labels.sum()) == 2181
    assert len(t.train_idx) + len(t.val_idx) + len(t.test_idx) == 9999 and len(t.test_idx) == 1000
    assert all((t.cat[:, f] < d).all() for f, d in enumerate(t.field_dims))
    assert (t.cat == 1).any() and (t.cat == 0).any()           # rare bucket and missing values both occur
    assert t.dense[0, 0] == pytest.approx(np.log(2.0))          # first row I1 = 1.0 -> log(1 + 1)


@pytest.mark.realdata
@pytest.mark.parametrize("source,n_genres", [("ml-1m-loo", 18), ("ml-100k", 19)])
def test_movielens_side_features(shared_data_dir, source, n_genres):
    sf = movielens_side_features(shared_data_dir / source, np.array([1, 2, 99999]), np.array([1, 2]))
    assert sf.user_table.shape == (3, 5) and sf.item_table.shape == (2, 2)
    assert (sf.user_table[2, 1:] == 0).all()                    # an unknown user gets "unknown" everywhere
    assert sf.bag_dims == [n_genres]
    assert (sf.item_bags[0, 0] > 0).sum() == 3                  # Toy Story: Animation|Children's|Comedy
    assert sf.field_dims[2] == 3      # users 1 and 2 are in different age groups (ML-100K: 24 -> 18, 53 -> 50) + unknown
