"""experiments/peers.py without the peers installed: RecBole atomic export round trip, param-file mapping, log parsing,
table, busy-machine rule, the workers' metric functions against the project's; plus a smoke run when the peers exist."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import peers
import peers_workers

from recsys.data.ctr import SideFeatures
from recsys.data.splits import ImplicitSplit
from recsys.evaluation import metrics


def small_split(seed: int = 0) -> ImplicitSplit:
    rng = np.random.default_rng(seed)
    n_users, n_items = 7, 40
    tu = np.repeat(np.arange(n_users), 5)
    ti = np.concatenate([rng.choice(n_items, 5, replace=False) for _ in range(n_users)])
    users = np.arange(n_users)
    return ImplicitSplit(n_users, n_items, tu, ti, users, rng.integers(0, n_items, n_users), users,
                         rng.integers(0, n_items, n_users), rng.integers(0, n_items, (n_users, 9)),
                         rng.integers(0, n_items, (n_users, 9)), np.arange(n_users) + 100, np.arange(n_items) + 1000)


def test_ranking_export_round_trips(tmp_path: Path) -> None:
    split = small_split()
    folder = peers.export_ranking(split, tmp_path, "toy")
    for part, users, items in (("train", split.train_users, split.train_items),
                               ("valid", split.val_users, split.val_items), ("test", split.test_users, split.test_items)):
        head, rows = peers.read_atomic(folder / f"toy.{part}.inter")
        assert head == ["user_id:token", "item_id:token"]
        got = np.array(rows, dtype=np.int64)
        np.testing.assert_array_equal(got[:, 0], users)
        np.testing.assert_array_equal(got[:, 1], items)
    users, cands = peers_workers._candidates(str(folder / "candidates.tsv"))
    np.testing.assert_array_equal(np.array(users, dtype=int), split.test_users)
    np.testing.assert_array_equal(np.array(cands, dtype=int), split.test_candidates())
    assert not list(folder.glob("*.tmp"))


def test_side_feature_export_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    side = SideFeatures(user_table=np.c_[np.arange(7), rng.integers(0, 3, (7, 2))],
                        item_table=np.c_[np.arange(5), rng.integers(0, 9, 5)],
                        item_bags=np.array([[[1, 2, 0]], [[3, 0, 0]], [[0, 0, 0]], [[4, 5, 6]], [[2, 0, 0]]]),
                        field_dims=[7, 3, 3, 5, 9], bag_dims=[7], field_names=["user", "gender", "age", "item", "year"])
    u_fields, i_fields = peers.export_side_features(side, tmp_path, "toy")
    assert u_fields == ["gender", "age"] and i_fields == ["year", "genre"]
    head, rows = peers.read_atomic(tmp_path / "toy" / "toy.user")
    assert head == ["user_id:token", "gender:token", "age:token"]
    np.testing.assert_array_equal(np.array(rows, dtype=int), side.user_table)
    head, rows = peers.read_atomic(tmp_path / "toy" / "toy.item")
    assert head == ["item_id:token", "year:token", "genre:token_seq"]
    assert [int(r[1]) for r in rows] == side.item_table[:, 1].tolist()
    assert [r[2] for r in rows] == ["1 2", "3", "", "4 5 6", "2"]


def test_param_file_maps_to_project_overrides(tmp_path: Path) -> None:
    p = tmp_path / "x.py"
    p.write_text("from collections import OrderedDict\ngru4rec_params = OrderedDict([\n('loss', 'cross-entropy'),\n"
                 "('constrained_embedding', True),\n('layers', [100]),\n('n_epochs', 10),\n('batch_size', 32),\n"
                 "('learning_rate', 0.2),\n('momentum', 0.2),\n('sample_alpha', 0.5)\n])\n")
    params = peers.read_param_file(p)
    assert params["layers"] == [100] and params["momentum"] == 0.2
    over, unmatched = peers.gru4rec_overrides(params)
    assert {"model.hidden_size=100", "model.layers=1", "model.constrained_embedding=true", "train.epochs=10",
            "model.batch_size=32", "train.lr=0.2", "model.sample_alpha=0.5", "train.optimizer=adagradm",
            "model.momentum=0.2", "model.logq_form=official", "model.epoch_end=drain"} <= set(over)
    assert unmatched == []
    (tmp_path / "bad.py").write_text("params = {}\n")
    with pytest.raises(ValueError, match="gru4rec_params"):
        peers.read_param_file(tmp_path / "bad.py")


def test_official_log_parsing() -> None:
    log = ("Started training\nEpoch1 --> loss: 7.123456 \t(5.30s) \t[330.19 mb/s | 10000 e/s]\n"
           "Epoch2 --> loss: 6.543210 \t(4.70s) \t[372.34 mb/s | 11000 e/s]\nTotal training time: 10.50s\n"
           "Recall@20: 0.677700 MRR@20: 0.357800\n")
    out = peers_workers.parse_gru4rec_log(log)
    assert out["epoch_seconds"] == [5.3, 4.7]
    assert out["samples_per_epoch"] == pytest.approx((10000 * 5.3 + 11000 * 4.7) / 2)
    assert out["quality"] == {"recall_at_20": 0.6777, "mrr_at_20": 0.3578}
    with pytest.raises(RuntimeError, match="no epoch lines"):
        peers_workers.parse_gru4rec_log("Started training\n")


def test_table_and_ratio() -> None:
    peer = peers.row_from({"epoch_seconds": [40.0, 40.0], "samples_per_epoch": 4_000_000.0,
                           "quality": {"hr_at_10": 0.69, "ndcg_at_10": 0.41}}, "RecBole 1.2.1", "b256", "samples/s",
                          skip_first=False)
    proj = peers.row_from({"epoch_seconds": [30.0, 20.0, 20.0], "samples_per_epoch": 4_000_000.0,
                           "quality": {"hr_at_10": 0.70}}, "project", "b256", "samples/s", skip_first=True)
    proj.ratio = proj.per_s / peer.per_s
    assert proj.seconds_per_epoch == 20.0 and proj.ratio == pytest.approx(2.0)
    lines = peers.markdown_table([peer, proj]).splitlines()
    assert lines[0].count("|") == 7 and len(lines) == 4
    assert lines[2] == "| RecBole 1.2.1 | b256 | 40.0 | 100,000 samples/s | hr@10 0.6900, ndcg@10 0.4100 | – |"
    assert lines[3].endswith("| 200,000 samples/s | hr@10 0.7000 | 2.00× |")


def test_rounds_combine_to_medians_and_per_round_ratios() -> None:
    """--rounds: each side's median s/epoch and quality; the ratio is the median of the rounds' own ratios (a slow
    spell hits both runs of a round), and every round's ratio is shown."""
    def row(system: str, secs: float, hr: float) -> peers.Row:
        return peers.row_from({"epoch_seconds": [secs], "samples_per_epoch": 1_000_000.0,
                               "quality": {"hr_at_10": hr}}, system, "b2048", "samples/s", skip_first=False)
    peer_rows = [row("RecBole 1.2.1", s, 0.66) for s in (20.0, 30.0, 24.0)]
    proj_rows = [row("project", s, h) for s, h in ((10.0, 0.67), (12.0, 0.67), (13.0, 0.68))]
    peer, proj = peers.combine_rounds(peer_rows, proj_rows)
    assert peer.seconds_per_epoch == 24.0 and peer.per_s == pytest.approx(1e6 / 24.0)
    assert proj.seconds_per_epoch == 12.0 and proj.quality == {"hr_at_10": 0.67}
    assert proj.ratios == pytest.approx([2.0, 2.5, 24.0 / 13.0]) and proj.ratio == pytest.approx(2.0)
    assert peer.ratio is None and peer.ratios == []
    line = peers.markdown_table([peer, proj]).splitlines()[3]
    assert line.endswith("| hr@10 0.6700 | 2.00× (rounds: 2.00, 2.50, 1.85) |")
    one_peer, one_proj = peers.combine_rounds(peer_rows[:1], proj_rows[:1])
    assert one_proj.ratio == pytest.approx(2.0) and peers.markdown_table([one_peer, one_proj]).endswith("| 2.00× |")


def test_busy_rule() -> None:
    assert peers.busy_reason(0.3, 2, [(1, "init", 0.0), (9, "bash", 5.0)]) is None
    assert "load average 1.50" in peers.busy_reason(1.5, 2, [])
    msg = peers.busy_reason(0.1, 2, [(42, "python", 95.0), (9, "bash", 5.0)])
    assert "pid 42 (python) 95 % CPU" in msg and "bash" not in msg
    procs, source = peers.sample_processes(0.2)
    assert source in ("psutil", "/proc") and all(pid != os.getpid() for pid, _, _ in procs)


def test_worker_metrics_agree_with_project() -> None:
    rng = np.random.default_rng(3)
    s = rng.normal(size=(200, 100)).round(1)   # rounding makes ties, counted against the positive by both
    ranks = metrics.rank_of_target(torch.from_numpy(s), torch.from_numpy(s[:, 0]), exclude_self=True)
    got = peers_workers.sampled_metrics(s[:, 0], s[:, 1:])
    assert got["hr_at_10"] == pytest.approx(float(metrics.hit_rate_at_k(ranks, 10).mean()))
    assert got["ndcg_at_10"] == pytest.approx(float(metrics.ndcg_at_k(ranks, 10).mean()))
    p = 1 / (1 + np.exp(-s.ravel()))
    y = np.tile(np.r_[1.0, np.zeros(99)], 200)
    lab = peers_workers.label_metrics(p, y)
    assert lab["auc"] == pytest.approx(float(metrics.auc(torch.from_numpy(p), torch.from_numpy(y))), abs=1e-6)
    assert lab["logloss"] == pytest.approx(float(metrics.logloss(torch.from_numpy(s.ravel()), torch.from_numpy(y))),
                                           rel=1e-5)


@pytest.mark.realdata
@pytest.mark.slow
def test_peers_quick_smoke(shared_data_dir: Path, tmp_path: Path) -> None:
    recbole, checkout = os.environ.get("PEERS_RECBOLE_PYTHON"), os.environ.get("PEERS_GRU4REC")
    if not recbole or not Path(recbole).exists() or not checkout or not (Path(checkout) / "run.py").exists():
        pytest.skip("peers not installed: set PEERS_RECBOLE_PYTHON (a python with RecBole 1.2.1) and PEERS_GRU4REC "
                    "(an official GRU4Rec checkout) to run the side-by-side smoke test")
    out = tmp_path / "peers.md"
    cmd = [sys.executable, str(ROOT / "experiments" / "peers.py"), "--quick", "--force", "--recbole-python", recbole,
           "--gru4rec", checkout, "--gru4rec-python", recbole, "--out", str(out),
           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    proc = subprocess.run(cmd, check=False, env={**os.environ, "RECSYS_DATA_DIR": str(shared_data_dir)},
                          capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = out.read_text()
    assert table.count("| project |") == 3 and "RecBole 1.2.1" in table and "GRU4Rec official" in table


def test_mlflow_run_holds_table_and_rows(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    peer = peers.Row("RecBole 1.2.1", "b256", 40.0, 100_000.0, "samples/s", {"hr_at_10": 0.69})
    proj = peers.Row("project", "b256", 20.0, 200_000.0, "samples/s", {"hr_at_10": 0.70}, ratio=2.0)
    table = peers.markdown_table([peer, proj])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = peers.log_mlflow(uri, table, [peer, proj], {"threads": 2, "cpu": "test cpu"}, str(tmp_path / "art"))
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "peers"
    assert run.data.params["threads"] == "2" and run.data.params["cpu"] == "test cpu"
    assert run.data.metrics["row1_project/project_over_peer"] == 2.0
    assert run.data.metrics["row0_peer/hr_at_10"] == 0.69
    assert (Path(client.download_artifacts(run_id, "peers.md", str(tmp_path))).read_text().strip() == table)
