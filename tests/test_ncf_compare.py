"""experiments/ncf_benchmark.py --compare: the side-by-side the coordinator runs alone, here at tiny size."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.realdata
def test_compare_prints_one_row_per_path_with_epochs_hr_and_provenance(shared_data_dir, tmp_path, monkeypatch, capsys):
    """The documented `python experiments/ncf_benchmark.py --compare train.optimizer=adam_loop train.optimizer=adam
    --epochs 2` (here ml-100k, 1 epoch, one batch size): both optimizer paths train through the harness."""
    spec = importlib.util.spec_from_file_location("ncf_benchmark", ROOT / "experiments" / "ncf_benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setenv("RECSYS_DATA_DIR", str(shared_data_dir))
    monkeypatch.setattr(sys, "argv", ["ncf_benchmark.py", "--compare", "train.optimizer=adam_loop",
                                      "train.optimizer=adam", "--epochs", "1", "--data", "ml-100k",
                                      "--batch-sizes", "8192", "--threads", "1", f"paths.cache_dir={tmp_path}"])
    mod.main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 8192 |")]
    assert [r.split(" | ")[1] for r in rows] == ["train.optimizer=adam_loop", "train.optimizer=adam"], out
    assert rows[0].endswith("| 1.00x |")
    hr = [float(r.split(" | ")[4]) for r in rows]
    assert all(0.05 < h <= 1.0 for h in hr), hr   # above chance (10 of 100 candidates), and a probability
    assert abs(hr[0] - hr[1]) < 0.02, hr          # the same Adam math: float-rounding differences only
    assert "threads 1" in out and "commit " in out and "load average" in out
