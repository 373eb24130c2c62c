"""experiments/ncf_split.py rebuilds the NCF paper's own ML-1M split from its test.rating (issue 12): checked against
ML-1M's real stars and timestamps (ml-1m-half), and the documented run on it trains through run.py."""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import ncf_split

from recsys.data.readers import read_movielens

pytestmark = pytest.mark.realdata

@pytest.fixture(scope="module")
def rebuilt(shared_data_dir, tmp_path_factory):
    """conf/experiment/ncf_paper.yaml's first command, into a temp data root, reading the shared datasets."""
    out = tmp_path_factory.mktemp("ncf-split")
    args = "python experiments/ncf_split.py --out ncf-split".split()[2:]   # noqa: SIM905 (the documented text)
    args[args.index("--out") + 1] = str(out)
    for flag, rel in (("--test-rating", "ncf-ml-1m/ml-1m.test.rating"), ("--pairs", "ml-1m-loo"),
                      ("--item-map", "ncf-ml-1m/ncf_item_id_map.partial.tsv"),
                      ("--ratings", "ml-1m-half"), ("--test-negative", "ncf-ml-1m/ml-1m.test.negative")):
        args += [flag, str(shared_data_dir / rel)]
    assert ncf_split.main(args) == 0
    d = out / ncf_split.NAME
    return out, pd.read_csv(d / "train.tsv", sep="\t"), pd.read_csv(d / "test.tsv", sep="\t"), \
        json.loads((d / "split.json").read_text())


def test_rebuilt_split_is_ml1m_minus_ncf_latest_ratings(rebuilt, shared_data_dir):
    _, train, test, stats = rebuilt
    loo = shared_data_dir / "ml-1m-loo"
    pairs = pd.concat([pd.read_csv(loo / f, sep="\t") for f in ("train.tsv", "test.tsv")])
    assert len(train) == 994_169 and len(test) == 6_040 and test["user_id"].is_unique   # NCF's file sizes
    both = pd.concat([train, test])
    assert not both.duplicated().any()                                  # disjoint
    assert len(both.merge(pairs, on=["user_id", "item_id"])) == len(pairs) == len(both)   # together: all of ML-1M
    assert stats["test_items_guessed"] <= 21 and stats["test_items_differing_from_ml-1m-loo"] > 1_000
    # NCF holds out each user's latest rating: check each rebuilt test item against the real stars and timestamps
    # (ml-1m-half: every rating of users 1..2999), which ncf_split used only to narrow ambiguous ids
    with gzip.open(shared_data_dir / "ml-1m-half" / "ratings.dat.gz", "rt") as fh:
        r = pd.read_csv(fh, sep="::", engine="python", names=["user_id", "item_id", "stars", "ts"])
    ncf = pd.read_csv(shared_data_dir / "ncf-ml-1m" / "ml-1m.test.rating", sep="\t", header=None,
                      names=["u", "i", "stars", "ts"]).assign(user_id=lambda d: d["u"] + 1)
    half = test[test["user_id"] <= r["user_id"].max()].merge(r, on=["user_id", "item_id"])
    assert len(half) == r["user_id"].nunique() == 2_999
    chk = half.merge(ncf, on="user_id", suffixes=("", "_ncf"))
    assert (chk["stars"] == chk["stars_ncf"]).all() and (chk["ts"] == chk["ts_ncf"]).all()
    latest = r.groupby("user_id")["ts"].max()
    assert (half.set_index("user_id")["ts"] == latest.loc[half["user_id"]].to_numpy()).all()


def test_ncf_negatives_in_movielens_ids(rebuilt, shared_data_dir):
    """NCF's 99 negatives per user, mapped: none is a movie the user trained on, and the quirk of NCF's file (156 rows
    whose negatives hold the user's own test item) survives the mapping."""
    out, train, test, stats = rebuilt
    lines = (out / ncf_split.NAME / "test.negative").read_text().splitlines()
    assert len(lines) == len(test) == 6_040
    seen = train.groupby("user_id")["item_id"].apply(set).to_dict()
    in_train = with_test = 0
    for ln, (u, i) in zip(lines, test.itertuples(index=False)):
        head, *negs = ln.split("\t")
        assert head == f"({u},{i})" and len(negs) == 99
        negs = [int(x) for x in negs]
        in_train += sum(x in seen[u] for x in negs)
        with_test += i in negs
    assert in_train == 0 and with_test == 156
    assert stats["negatives_exact"] + stats["negatives_drawn_among_candidates"] == 597_960
    assert stats["negatives_exact"] > 450_000


def test_first_appearance_map_agrees_with_the_pinned_ids(shared_data_dir):
    """The exact map that a full ratings.dat gives (NCF ids = first appearance) equals every id the partial map pins,
    on the ids that ml-1m-half's first 2,999 users reach."""
    ratings = read_movielens("ml-1m", shared_data_dir / "ml-1m-half")
    derived = ncf_split.candidates_from_ratings(ratings)
    partial = ncf_split.candidates_from_map(shared_data_dir / "ncf-ml-1m" / "ncf_item_id_map.partial.tsv")
    pinned = [k for k in derived if len(partial[k]) == 1]
    assert len(derived) > 3_000 and len(pinned) > 2_500
    assert all(derived[k] == partial[k] for k in pinned)
    assert all(derived[k][0] in partial[k] for k in derived)


def test_missing_folder_names_the_script_that_builds_it(tmp_path):
    from recsys.data.config import validate_data_cfg
    from recsys.data.sources import DataNotFoundError

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["data=ncf-ml-1m-split"])
    with pytest.raises(DataNotFoundError, match=r"build it with: python experiments/ncf_split.py --out <data root>"):
        validate_data_cfg(cfg.data, tmp_path, tmp_path / "cache")


def test_full_ratings_file_gives_the_exact_split(tmp_path):
    """With a complete ratings.dat the item map is exact: a same-second tie is resolved by NCF's own id."""
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "ratings.dat").write_text("1::50::5::10\n1::40::3::20\n1::30::4::20\n2::40::2::5\n2::60::1::9\n")
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    pd.DataFrame({"user_id": [1, 1, 2], "item_id": [50, 40, 40]}).to_csv(pairs / "train.tsv", sep="\t", index=False)
    pd.DataFrame({"user_id": [1, 2], "item_id": [30, 60]}).to_csv(pairs / "test.tsv", sep="\t", index=False)
    # NCF ids by first appearance: 50 -> 0, 40 -> 1, 30 -> 2, 60 -> 3; NCF held out 40 for user 1 (tie at ts 20)
    (tmp_path / "t.rating").write_text("0\t1\t3\t20\n1\t3\t1\t9\n")
    (tmp_path / "t.negative").write_text("(0,1)\t3\n(1,3)\t2\n")
    train, test, negs, stats = ncf_split.rebuild(tmp_path / "t.rating", pairs, None, tmp_path / "ml",
                                                 tmp_path / "t.negative")
    assert test.values.tolist() == [[1, 40], [2, 60]] and stats["test_items_guessed"] == 0
    assert negs == [[60], [30]] and stats["negatives_exact"] == 2
    assert sorted(map(tuple, train.values.tolist())) == [(1, 30), (1, 50), (2, 40)]
    assert stats["test_items_differing_from_pairs"] == 1
    with pytest.raises(ValueError, match="maps to no movie that user rated"):
        (tmp_path / "bad.rating").write_text("1\t2\t4\t20\n")   # user 2 never rated NCF item 2 (movie 30)
        ncf_split.rebuild(tmp_path / "bad.rating", pairs, None, tmp_path / "ml")


def test_documented_run_on_the_rebuilt_split(rebuilt, tmp_path):
    """conf/experiment/ncf_paper.yaml's command on the rebuilt folder (tiny model, 20 batches a stage): the test rows
    are ranked against NCF's own negatives, read from the folder's test.negative."""
    from recsys.data.splits import build_split
    from recsys.pipeline import run

    out, _, test, _ = rebuilt
    cmd = "python run.py experiment=ncf_paper data=ncf-ml-1m-split"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*cmd.split()[2:], f"paths.root_dir={tmp_path}", f"paths.data_dir={out}",
                                           "train.epochs=1", "+trainer.limit_train_batches=20", "model.factors=4",
                                           "model.mlp_layers=[8,4]", "trainer.enable_progress_bar=false",
                                           "eval.full_ranking=false", "tracking.log_model=false", "bench.requests=20",
                                           "bench.warmup=2", "bench.full_catalogue_requests=2",
                                           "bench.throughput_repeats=1", "bench.throughput_batch=128"])
    run(cfg)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    r = next(x for x in runs if "final/hr_at_10" in x.data.metrics)
    assert r.data.params["data.source"] == "ncf-ml-1m-split"
    assert r.data.metrics["data/n_users"] == test["user_id"].nunique()
    sp = build_split(cfg.data, str(out), cfg.paths.cache_dir, cfg.seed)
    first = (out / ncf_split.NAME / "test.negative").read_text().splitlines()[0].split("\t")
    k = int(np.searchsorted(sp.user_ids, int(first[0].strip("()").split(",")[0])))
    row = int(np.flatnonzero(sp.test_users == k)[0])
    assert sp.item_ids[sp.test_negatives[row]].tolist() == [int(x) for x in first[1:]]
    assert sp.n_test_item_in_negatives == 156
    assert 0 < r.data.metrics["final/hr_at_10"] <= 1
