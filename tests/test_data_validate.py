"""Bad data fails before the MLflow run opens (issue 16, item 4): every malformed case names the file, the line, what
was found and what was expected; nothing is logged or cached. ``data.bad_lines=skip`` drops and counts instead."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from recsys.data.readers import read_csv_interactions, read_movielens
from recsys.data.validate import normalize_sep, read_table
from recsys.errors import ConfigError, DataError
from recsys.pipeline import run

CONF = str(Path(__file__).resolve().parents[1] / "conf")
rng = np.random.default_rng(0)
U_DATA = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in zip(rng.integers(1, 40, 600), rng.integers(1, 200, 600),
                                                              rng.integers(1, 6, 600), 880000000 + np.arange(600)))


def cfg_for(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[f"paths.root_dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}",
                                            "train.epochs=1", "trainer.enable_progress_bar=false", *overrides])


def write(tmp_path: Path, rel: str, text: str) -> Path:
    p = tmp_path / "data" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def fails_before_run(tmp_path: Path, *overrides: str) -> str:
    """Run the job; it must raise DataError before an MLflow run opens and before anything is cached."""
    with pytest.raises(DataError) as e:
        run(cfg_for(tmp_path, *overrides))
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / ".cache" / "dense").exists()
    return str(e.value)


SESSIONS = ["model=gru4rec", "data=sessions_csv", "data.source=s", "data.train_file=clicks.csv"]
CTR = ["model=deepfm", "data=ctr_csv", "data.source=c", "data.file=rows.csv", "data.cat_cols=[a]"]


@pytest.mark.parametrize("case,files,overrides,needles", [
    ("empty u.data", {"ml-100k/u.data": ""}, ["data=ml-100k"], ["u.data: found an empty file"]),
    ("comma-separated u.data", {"ml-100k/u.data": U_DATA.replace("\t", ",")}, ["data=ml-100k"],
     ["u.data, line 1: found 1 field(s)", "expected 4 fields (user, item, rating, timestamp)", "comma-separated"]),
    ("truncated last line", {"ml-100k/u.data": U_DATA + "196\t242\t3"}, ["data=ml-100k"],
     ["u.data, line 601: found 3 field(s) ('196\\t242\\t3')", "truncated"]),
    ("non-numeric row", {"ml-100k/u.data": U_DATA[:U_DATA.index("\n", 500) + 1] + "7\tabc\t3\t881250949\n"
                         + U_DATA[U_DATA.index("\n", 500) + 1:]}, ["data=ml-100k"],
     ["column 'item': found 'abc'; expected a number"]),
    ("generic csv with a one-field line", {"mine/clicks.tsv": "user\titem\n1\t2\n3\t4\n42\n5\t6\n"},
     ["data=csv", "data.source=mine", "data.train_file=clicks.tsv"],
     ["clicks.tsv, line 4: found 1 field(s) ('42'); expected 2 fields"]),
    ("header-only csv", {"mine/clicks.tsv": "user\titem\n"}, ["data=csv", "data.source=mine",
                                                             "data.train_file=clicks.tsv"],
     ["clicks.tsv: found a header line but no data rows"]),
    ("header-only sessions file", {"s/clicks.csv": "session,item,time\n"}, SESSIONS,
     ["clicks.csv: found a header line but no data rows"]),
    ("session times as non-ISO dates", {"s/clicks.csv": "session,item,time\n1,10,09.05.2016\n1,11,09.05.2016\n"},
     SESSIONS, ["clicks.csv, line 2, column 'time': found '09.05.2016'; expected a number (a timestamp) "
                "(data.time_col='time')", "data.time_format"]),
    ("unparseable date with a format", {"s/clicks.csv": "session,item,time\n1,10,2016-05-09\n1,11,09/05/2016\n"},
     SESSIONS + ["data.time_format=%Y-%m-%d"], ["line 3, column 'time': found '09/05/2016'"]),
    ("CTR labels not binary", {"c/rows.csv": "label,a\n1,x\n0,y\n2,x\n"}, CTR,
     ["rows.csv, line 4, column 'label': found label 2", "{0, 1} or {-1, 1}", "data.label_threshold"]),
    ("CTR non-numeric label", {"c/rows.csv": "label,a\n1,x\nyes,y\n"}, CTR,
     ["line 3, column 'label': found 'yes'; expected a number"]),
    ("CTR non-numeric feature", {"c/rows.csv": "label,a,n\n1,x,2.5\n0,y,lots\n"}, CTR + ["data.num_cols=[n]"],
     ["line 3, column 'n': found 'lots'"]),
    ("wrong column name", {"mine/clicks.tsv": "uid,sku\n1,2\n"}, ["data=csv", "data.source=mine",
                                                                "data.train_file=clicks.tsv"],
     ["no column 'user' (columns found: ['uid,sku'])", "comma-separated"]),
    ("libfm bad token", {"c/rows.libfm": "1 0:1 1:2\n0 0:3 1\n"}, ["model=deepfm", "data=libfm", "data.source=c",
                                                                  "data.file=rows.libfm"],
     ["rows.libfm, line 2: found '0 0:3 1'"]),
])
def test_malformed_data_fails_before_the_run(tmp_path, case, files, overrides, needles):
    for rel, text in files.items():
        write(tmp_path, rel, text)
    msg = fails_before_run(tmp_path, *overrides)
    for needle in needles:
        assert needle in msg, (case, msg)


def test_bad_lines_skip_drops_and_counts(tmp_path):
    write(tmp_path, "ml-100k/u.data", U_DATA + "1,2,3,4\n" + "5\t6\t7\t8\n" + "196\t242\t3")
    df = read_movielens("ml-100k", tmp_path / "data" / "ml-100k", bad_lines="skip")
    assert len(df) == 601 and df.attrs["skipped_lines"] == 2
    p = write(tmp_path, "mine/c.csv", "user,item,time\n1,2,5\n1,3,x\n2,4,\n2,5,7\n")
    df = read_csv_interactions(p, "user", "item", "time", sep=",", bad_lines="skip")
    assert df["item"].tolist() == [2, 5] and df.attrs["skipped_lines"] == 2


def test_skipped_count_is_logged(tmp_path):
    from mlflow.tracking import MlflowClient

    rows = "".join(f"u{u},i{i}\n" for u in range(30) for i in rng.choice(120, 8, replace=False))
    write(tmp_path, "mine/c.csv", "user,item\n" + rows + "bad line with no comma\n")
    run(cfg_for(tmp_path, "data=csv", "data.source=mine", "data.train_file=c.csv", "data.sep=comma",
                "data.bad_lines=skip", "data.num_eval_negatives=20", "model.factors=4", "model.mlp_layers=[8,4]",
                "bench.requests=5", "bench.warmup=1", "bench.full_catalogue_requests=1", "bench.throughput_repeats=1"))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    r = client.search_runs([client.get_experiment_by_name("recsys-compress").experiment_id])[0]
    assert r.data.metrics["data/skipped_lines"] == 1.0 and r.info.run_name.startswith("neumf-mine")


def test_iso_dates_need_no_format(tmp_path):
    """ISO dates (2016-05-09, the issue's case) are read as midnight UTC without data.time_format."""
    p = write(tmp_path, "s/clicks.csv", "session,item,time\n1,10,2016-05-09\n1,11,2016-05-09T10:00:00\n")
    out = read_table(p).columns({"t": ("time", "data.time_col", "time")})
    assert out["t"].tolist() == [1462752000.0, 1462752000.0 + 36000]


def test_minus_one_labels_and_dates_are_read(tmp_path):
    p = write(tmp_path, "c/rows.tsv", "y\ta\twhen\n-1\tx\t2024-01-02\n1\ty\t2024-01-01\n")
    t = read_table(p, sep="tab")
    out = t.columns({"y": ("y", "data.label_col", "label"), "t": ("when", "data.time_col", "time")},
                    time_format="%Y-%m-%d")
    assert out["y"].tolist() == [0.0, 1.0] and out["t"].tolist() == [1704153600.0, 1704067200.0]
    out = t.columns({"t": ("when", "data.time_col", "time")}, time_format="iso8601")
    assert out["t"].tolist() == [1704153600.0, 1704067200.0]


def test_separator_names_and_empty_separator():
    assert normalize_sep("tab") == "\t" and normalize_sep("space") == " " and normalize_sep("semicolon") == ";"
    assert normalize_sep(";") == ";" and normalize_sep("\t") == "\t"
    assert normalize_sep("\\t") == "\t"          # what Hydra hands over for data.sep=\t typed in a shell
    with pytest.raises(ConfigError, match="data.sep=space"):
        normalize_sep("")


def test_space_separated_file_via_alias(tmp_path):
    p = write(tmp_path, "s/c.txt", "session item time\n1 10 5\n1 11 6\n")
    t = read_table(p, sep="space")
    assert list(t.frame.columns) == ["session", "item", "time"] and len(t.frame) == 2


def test_unknown_format_lists_every_format(tmp_path):
    with pytest.raises(ConfigError) as e:
        run(cfg_for(tmp_path, "data=csv", "data.source=x", "data.train_file=y", "data.format=xml"))
    for fmt in ("movielens", "csv", "ncf", "ctr_csv", "libfm", "criteo", "sessions"):
        assert f"{fmt} (" in str(e.value)
    with pytest.raises(ConfigError, match="'libfm' is read by DeepFM"):
        run(cfg_for(tmp_path, "data=libfm", "data.source=x", "data.file=y"))


def test_parquet_rows_are_named(tmp_path):
    p = tmp_path / "r.parquet"
    pd.DataFrame({"label": [1, 0, 5], "a": ["x", "y", "z"]}).to_parquet(p)
    with pytest.raises(DataError, match=r"Parquet row 3"):
        read_table(p).columns({"label": ("label", "data.label_col", "label")})


def test_criteo_format_accepts_minus_one_labels(tmp_path):
    """Issue 16's case: Criteo rows labelled {-1, 1} used to train an epoch and then fail in AUC."""
    from recsys.data.ctr import parse_criteo_cfg, read_criteo

    names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    rows = [[1 if r % 3 == 0 else -1] + [r % 7] * 13 + [f"h{r % 5}"] * 26 for r in range(60)]
    write(tmp_path, "crit/rows.csv", ",".join(names) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    cfg = parse_criteo_cfg({"name": "crit", "format": "criteo", "source": "crit", "file": "rows.csv", "min_count": 2})
    t = read_criteo(cfg, tmp_path / "data", tmp_path, seed=0)
    assert sorted(set(t.labels.tolist())) == [0.0, 1.0] and t.labels.sum() == 20
    assert "random rows (seed=0)" in t.split_rule
