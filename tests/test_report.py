"""recsys.report against a synthetic MLflow store: every table cell is a logged number (or their mean / std over
seeds), failed and bookkeeping runs are left out, files are written and logged, and bad selections say what exists."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from test_report_store import SETTINGS, build_store

from recsys import report
from recsys.report.plots import pareto_mask


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    uri, exp, logged = build_store(root)
    return root, uri, exp, logged


def same(a: float, b: float) -> bool:
    return (isinstance(a, float) and math.isnan(a) and math.isnan(b)) or a == b


def test_tables_match_logged_numbers_exactly(store, tmp_path):
    root, uri, exp, logged = store
    runs = report.load_runs(exp, uri)
    assert set(runs["run_id"]) == set(logged)  # the FAILED run and the study parent are not rows
    rep = report.build(runs, plots=False)
    files = report.write_report(rep, tmp_path / "out")
    for name in ("seed_table.md", "compression_matrix.md", "report.md"):  # each table says where it came from
        assert "Made with: commit" in files[name].read_text() and "MKL" in files[name].read_text(), name
    for name in ("compression_matrix", "seed_table"):
        table = pd.read_csv(files[f"{name}.csv"])
        assert len(table) > 0
        for _, row in table.iterrows():
            ids = row["run_ids"].split(",")
            assert len(ids) == row["n"]
            stage = row.get("stage", "final")
            for col in table.columns:
                if "/" not in col and name == "compression_matrix" or col.endswith("_std"):
                    continue
                key = col if name == "compression_matrix" else f"{stage}/{col}"
                if key.split("/", 1)[-1] in ("n", "seeds", "run_ids", "stage", "dataset", "model", "technique",
                                              "setting"):
                    continue
                vals = np.array([logged[i][key] for i in ids if key in logged[i]], dtype=float)
                if len(vals) == 0:
                    assert math.isnan(row[col]), (name, col)  # not logged -> empty, never invented
                    continue
                assert row[col] == float(np.mean(vals)), (name, col, ids)
                std = row[f"{col}_std"]
                assert same(std, float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan), (name, col)
                if len(vals) == 1:
                    assert row[col] == vals[0]  # a single run: exactly the logged number


def test_groups_are_technique_by_setting_with_seeds(store):
    root, uri, exp, logged = store
    rep = report.build(report.load_runs(exp, uri), plots=False)
    m = rep.matrix
    got = {(r.technique, r.setting): (r.n, r.seeds) for r in m.itertuples()}
    want = {}
    for ratio, method, bits, seeds in SETTINGS:
        tech = "dense" if not ratio and bits == 32 else (f"prune:{method}" if ratio else "quant:int8")
        want[(tech, f"prune.ratio={ratio}, quant.bits={bits}")] = (len(seeds), ",".join(map(str, seeds)))
    assert got == want
    assert m.iloc[0]["technique"] == "dense"
    dense = m[m["technique"] == "dense"].iloc[0]
    assert math.isnan(dense["final/compression_ratio"])  # dense runs did not log it: shown as "–"
    md = rep.matrix_markdown()
    assert "HR@10" in md and "±" in md and "–" in md and "hr_at_10" not in md
    assert "recall@10" in rep.seed_markdown()
    assert set(rep.seed["stage"]) == {"dense", "compressed", "finetuned"}


def test_cli_writes_files_plots_and_logs_them(store, tmp_path, capsys):
    root, uri, exp, logged = store
    rc = report.main(["--uri", uri, "--experiment", exp, "--out", str(tmp_path / "reports")])
    assert rc == 0
    out = tmp_path / "reports" / exp
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "seed_table.md", "seed_table.csv", "compression_matrix.md", "compression_matrix.csv",
            "quality_vs_sparsity.png", "quality_vs_bytes.png", "quality_vs_latency.png",
            "latency_by_backend.png"} <= names
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    client = MlflowClient(uri)
    rep_runs = client.search_runs([client.get_experiment_by_name(exp).experiment_id], "tags.`recsys.kind` = 'report'")
    assert len(rep_runs) == 1
    assert {a.path for a in client.list_artifacts(rep_runs[0].info.run_id, "report")} >= {
        "report/report.md", "report/compression_matrix.csv", "report/quality_vs_bytes.png"}
    # a second report of the same selection reuses its run; the report run never becomes a table row
    assert report.main(["--uri", uri, "--experiment", exp, "--out", str(tmp_path / "reports")]) == 0
    assert len(client.search_runs([client.get_experiment_by_name(exp).experiment_id],
                                  "tags.`recsys.kind` = 'report'")) == 1
    assert len(report.load_runs(exp, uri)) == len(logged)


def test_selection_by_tag_and_run_ids(store):
    root, uri, exp, logged = store
    ids = list(logged)[:2]
    assert set(report.load_runs(None, uri, run_ids=ids)["run_id"]) == set(ids)
    seed2 = report.load_runs(exp, uri, tags={"seed": "2"})
    assert len(seed2) == sum(2 in s[3] for s in SETTINGS)
    assert len(report.load_runs(exp, uri, sweep="synthetic")) == len(logged)


@pytest.mark.parametrize("args,needle", [
    (["--experiment", "nope"], "experiment 'nope' not found"),
    (["--experiment", "synthetic-compress", "--quality", "hr_at_11"], "not logged by any selected run"),
    (["--experiment", "synthetic-compress", "--tag", "seed=77"], "no finished pipeline runs match"),
])
def test_bad_selection_is_a_clear_error(store, tmp_path, capsys, args, needle):
    root, uri, exp, logged = store
    assert report.main(["--uri", uri, "--out", str(tmp_path), "--no-log", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err
    if "hr_at_11" in args:
        assert "final/hr_at_10" in err  # the closest logged metric is suggested


def test_pareto_mask():
    pts = np.array([[0.9, 100.0], [0.8, 50.0], [0.7, 60.0], [0.9, 120.0], [np.nan, 1.0]])
    assert pareto_mask(pts, ["maximize", "minimize"]).tolist() == [True, True, False, False, False]
