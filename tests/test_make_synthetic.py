"""experiments/make_synthetic.py at a tiny size: the file reads back through the project's generic reader and split
(`data=csv`), with the promised shape: unique pairs, >= 20 per user, skewed popularity and activity, per-user
timestamps strictly increasing, same seed -> same bytes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from recsys.data import read_csv_interactions
from recsys.data.splits import build_split

ROOT = Path(__file__).resolve().parents[1]


def make(out: Path, *extra: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "make_synthetic.py"), "--users", "300",
                           "--items", "3000", "--rows", "30000", "--seed", "3", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_synthetic_log_reads_back_with_its_shape(tmp_path):
    out = tmp_path / "syn" / "interactions.tsv"
    printed = make(out)
    assert f"{out.stat().st_size:,} bytes" in printed and "rows/s" in printed
    df = read_csv_interactions(out, "user", "item", time_col="timestamp")
    assert 0.99 * 30000 <= len(df) <= 30000
    assert f"{len(df):,} rows" in printed
    assert not df.duplicated(["user", "item"]).any()
    assert df["user"].nunique() == 300 and df["user"].min() == 1 and df["item"].max() <= 3000
    per_user = df.groupby("user").size()
    assert per_user.min() >= 20 and per_user.max() > 4 * per_user.median()          # activity skew
    pop = np.sort(df["item"].value_counts().to_numpy())[::-1]
    assert pop[:300].sum() > 0.3 * len(df)                                           # top 10 % items: > 30 % of rows
    assert (df.groupby("user")["timestamp"].diff().dropna() > 0).all()               # strictly increasing per user
    # the real data=csv path: leave-latest-out split over the same file
    split = build_split({"name": "syn", "format": "csv", "source": "syn", "train_file": "interactions.tsv",
                         "time_col": "timestamp"}, tmp_path, tmp_path / "cache", seed=0)
    assert split.n_users == 300 and len(split.test_users) == 300
    last = df.loc[df.groupby("user")["timestamp"].idxmax()].set_index("user")["item"]
    got = dict(zip(split.user_ids[split.test_users].tolist(), split.item_ids[split.test_items].tolist()))
    assert got == last.to_dict()
    again = tmp_path / "again.tsv"
    make(again)
    assert again.read_bytes() == out.read_bytes()
