"""Sparsity frontier: magnitude vs structured pruning at ratios 0.2 ... 0.95 (each fine-tuned), on reloaded artifacts.

    python experiments/sparsity_frontier.py                                   # ml-1m-loo, NeuMF f=32 [128,64,32]
    python experiments/sparsity_frontier.py data=ml-100k                      # any run.py override passes through
    python experiments/sparsity_frontier.py --sweep DIR[,DIR2]                # only tabulate existing sweep(s)

Launches one Hydra multirun (prune=magnitude,structured x prune.ratio=...; the dense model is trained once and cached),
then reads the sweep's MLflow runs and prints, per method and ratio: fine-tuned HR@10 and its loss vs dense (points),
artifact bytes and compression x, batch-1 and full-catalogue p50 latency and speed-ups (dense ÷ pruned, same runtime
and thread count, which is logged). Reports the largest ratio within ``--max-loss`` points of dense HR@10 per method,
and logs the table (CSV + markdown) and the headline figures to an MLflow run tagged recsys.kind=report.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from recsys.fileio import write_csv, write_text  # noqa: E402
from recsys.provenance import with_provenance  # noqa: E402

RATIOS = "0.2,0.4,0.6,0.8,0.9,0.95"
PAPER = ["data=ml-1m-loo", "model=neumf", "model.factors=32", "model.mlp_layers=[128,64,32]"]


def frontier(sweep: str, uri: str, experiment: str, max_loss_pt: float = 1.0):
    """Per-run frontier rows and, per method, the largest ratio within ``max_loss_pt`` HR@10 points of dense."""
    import pandas as pd

    from recsys.report import load_runs

    runs = pd.concat([load_runs(experiment, uri, sweep=s) for s in sweep.split(",")], ignore_index=True)
    m = lambda r, k: float(r.get(f"metrics.{k}", float("nan")))  # noqa: E731
    rows = []
    for _, r in runs.iterrows():
        rows.append({"method": r["params.prune.method"], "ratio": float(r["params.prune.ratio"]),
                     "seed": r["params.seed"], "dense_hr": m(r, "dense/hr_at_10"),
                     "pruned_hr": m(r, "pruned/hr_at_10"), "hr": m(r, "finetuned/hr_at_10"),
                     "loss_pt": 100 * (m(r, "dense/hr_at_10") - m(r, "finetuned/hr_at_10")),
                     "recall": m(r, "finetuned/recall_at_10"), "bytes": m(r, "final/artifact_bytes"),
                     "dense_bytes": m(r, "dense/artifact_bytes"), "compression": m(r, "final/compression_ratio"),
                     "p50_ms": m(r, "final/latency_p50_ms"), "dense_p50_ms": m(r, "dense/latency_p50_ms"),
                     "speedup_p50": m(r, "final/speedup_p50"), "full_p50_ms": m(r, "final/latency_full_p50_ms"),
                     "speedup_full": m(r, "final/speedup_full_p50"), "format": r.get("tags.artifact_format"),
                     "threads": r.get("params.bench.threads")})
    table = pd.DataFrame(rows)
    table = table[table["bytes"].notna()]       # a run still in progress has no final/ metrics yet
    table = table.sort_values(["method", "ratio"]).reset_index(drop=True)
    best = {}
    for method, g in table.groupby("method"):
        ok = g[g["loss_pt"] <= max_loss_pt]
        best[method] = ok.iloc[-1].to_dict() if len(ok) else None
    return table, best


def render(table, best, max_loss_pt: float) -> str:
    """Markdown table + one headline line per method."""
    cols = ["method", "ratio", "pruned_hr", "hr", "loss_pt", "recall", "bytes", "compression", "p50_ms",
            "speedup_p50", "full_p50_ms", "speedup_full", "format"]
    fmt = {"pruned_hr": "{:.4f}", "hr": "{:.4f}", "loss_pt": "{:+.2f}", "recall": "{:.4f}", "bytes": "{:,.0f}",
           "compression": "{:.2f}x", "p50_ms": "{:.4f}", "speedup_p50": "{:.2f}x", "full_p50_ms": "{:.3f}",
           "speedup_full": "{:.2f}x", "ratio": "{:.2f}"}
    heads = ["method", "ratio", "HR@10 pruned", "HR@10 fine-tuned", "loss pt", "recall@10", "artifact B",
             "compression", "batch-1 p50 ms", "speed-up", "full p50 ms", "full speed-up", "format"]
    lines = ["| " + " | ".join(heads) + " |", "|---" * len(heads) + "|"]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(fmt.get(c, "{}").format(r[c]) for c in cols) + " |")
    d = table.iloc[0]
    lines += ["", f"dense: HR@10 {d['dense_hr']:.4f}, {d['dense_bytes']:,.0f} B, batch-1 p50 {d['dense_p50_ms']:.4f} ms "
              f"({d['threads']} thread(s), eager PyTorch, reloaded artifact)"]
    for method, b in best.items():
        if b is None:
            lines.append(f"{method}: no ratio keeps HR@10 within {max_loss_pt} pt of dense")
        else:
            lines.append(f"{method}: largest ratio within {max_loss_pt} pt = {b['ratio']:.2f} (loss {b['loss_pt']:+.2f} "
                         f"pt): {b['bytes']:,.0f} B ({b['compression']:.2f}x fewer), batch-1 p50 {b['p50_ms']:.4f} ms "
                         f"({b['speedup_p50']:.2f}x), full-catalogue {b['full_p50_ms']:.3f} ms ({b['speedup_full']:.2f}x)")
    return "\n".join(lines)


def log(table, best, md: str, sweep: str, uri: str, experiment: str) -> str:
    """Log the frontier to an MLflow report run; returns its id."""
    import tempfile

    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="sparsity_frontier", tags={"recsys.kind": "report", "sweep_dir": sweep}) as run:
        mlflow.log_param("bench.threads", str(table["threads"].iloc[0]))
        for method, b in best.items():
            if b is not None:
                mlflow.log_metrics({f"frontier/{method}_{k}": float(b[k]) for k in
                                    ("ratio", "loss_pt", "bytes", "compression", "p50_ms", "speedup_p50",
                                     "full_p50_ms", "speedup_full")})
        with tempfile.TemporaryDirectory() as d:
            write_csv(Path(d) / "sparsity_frontier.csv", table, index=False)
            write_text(Path(d) / "sparsity_frontier.md", with_provenance(md))
            mlflow.log_artifacts(d, "report")
        return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", help="tabulate these existing sweep dirs (comma-separated) instead of running one")
    ap.add_argument("--ratios", default=RATIOS)
    ap.add_argument("--max-loss", type=float, default=1.0, help="HR@10 points of loss allowed vs dense")
    ap.add_argument("--root", default=str(ROOT), help="paths.root_dir (MLflow store and caches live under it)")
    ap.add_argument("--experiment", default="sparsity_frontier")
    args, overrides = ap.parse_known_args(argv)
    uri = f"sqlite:///{Path(args.root).resolve()}/mlruns/mlflow.db"
    sweep = args.sweep
    if sweep is None:
        sweep = str(Path(args.root).resolve() / "multirun" / f"sparsity_frontier-{time.strftime('%Y%m%d-%H%M%S')}")
        data = [o for o in overrides if o.startswith("data=")]
        cmd = [sys.executable, str(ROOT / "run.py"), "-m", *(PAPER if not data else PAPER[1:]), *overrides,
               "prune=magnitude,structured", f"prune.ratio={args.ratios}", f"paths.root_dir={args.root}",
               f"tracking.experiment={args.experiment}", f"hydra.sweep.dir={sweep}",
               "trainer.enable_progress_bar=false"]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=ROOT)
        print(f"multirun wall time: {time.perf_counter() - t0:.0f} s (rc={rc})")
        if rc:
            return rc
    table, best = frontier(sweep, uri, args.experiment, args.max_loss)
    md = render(table, best, args.max_loss)
    print(md)
    print(f"logged to MLflow run {log(table, best, md, sweep, uri, args.experiment)} ({uri})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
