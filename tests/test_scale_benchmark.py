"""experiments/scale_benchmark.py end to end on a tiny make_synthetic.py file: every stage timed, the table printed
with the optimizer path and the --max-train-minutes cut stated, and one MLflow run holding the figures and the table."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scale_benchmark_tiny_file_bounded_and_logged(tmp_path):
    from mlflow.tracking import MlflowClient

    sys.path.insert(0, str(ROOT / "experiments"))
    from make_synthetic import main as make_synthetic

    f = tmp_path / "syn" / "tiny" / "interactions.tsv"
    make_synthetic(["--users", "300", "--items", "200", "--rows", "6000", "--out", str(f)])
    env = {**os.environ, "RECSYS_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("RECSYS_TRACKING_URI", None)
    p = subprocess.run([sys.executable, "experiments/scale_benchmark.py", "--file", str(f), "--baseline", "none",
                        "--threads", "1", "--max-train-minutes", "0.00001", "--batch-size", "256",
                        "bench.requests=5", "bench.warmup=1", "bench.full_catalogue_requests=1",
                        "bench.throughput_repeats=1", "bench.throughput_batch=64", "data.num_eval_negatives=20"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    for stage in ("read + split", "negatives (1 epoch)", "one epoch (fit + val)", "training samples/s",
                  "full-ranking eval", "export (save + reload)", "latency", "optimizer path"):
        assert f"| {stage} |" in out, out
    assert "Training stopped by --max-train-minutes" in out   # cut after its first batch, and said so
    assert re.search(r"Highest RSS sample [0-9.]+ GB \(every 0.1 s\) during \S.* at \S+\.py:\d+", out), out  # where
    # 2 x 500 rows: a batch hits most of them, so Adam stays dense (scattered table gradients)
    assert "| users | 300 |" in out and "| optimizer path | dense Adam, table gradients scattered" in out
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("scale-benchmark").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    m = runs[0].data.metrics
    assert m["big/read_split"] > 0 and m["big/read_split_cpu_s"] > 0 and m["big/full_ranking_eval_peak_rss_gb"] > 0 and 0 < m["big/epoch_fraction"] < 1
    assert runs[0].data.params["max_train_minutes"] == "1e-05" and "bench.requests=5" in runs[0].data.params[
        "overrides"]
    table = client.download_artifacts(runs[0].info.run_id, "scale_benchmark.md", str(tmp_path))
    assert "| latency |" in Path(table).read_text()
