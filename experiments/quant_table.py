"""Quantization table (issue 4): fp32 / fp16 / int8 PTQ / int4 PTQ / int4 QAT / int2 QAT / prune 60 % + int8 on one
cached dense NeuMF, each row one pipeline job (``experiment=quant_table`` + the row's overrides) logged to MLflow; the
table is built from those runs with pandas, printed, checked against the issue's targets and logged to a report run.

    python experiments/quant_table.py [hydra overrides ...] [--rows fp32,int8_ptq] [--table-only] [--uri URI]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from recsys.fileio import write_csv, write_text  # noqa: E402
from recsys.provenance import with_provenance  # noqa: E402

ROWS: dict[str, list[str]] = {
    "fp32": ["quant=ptq", "quant.bits=32"],
    "fp16": ["quant=ptq", "quant.bits=16"],
    "int8_ptq": ["quant=ptq", "quant.bits=8"],
    "int4_ptq": ["quant=ptq", "quant.bits=4"],
    "int4_qat": ["quant=qat", "quant.bits=4", "finetune.epochs=2"],
    "int2_qat": ["quant=qat", "quant.bits=2", "finetune.epochs=2"],
    "prune60_int8": ["prune=magnitude", "prune.ratio=0.6", "quant=ptq", "quant.bits=8", "finetune.epochs=2",
                     "finetune.lr=1e-5"],
    # mixed widths: the bytes are in the embedding tables, the accuracy risk in the small Linear layers
    "int4emb_int8lin_ptq": ["quant=ptq", "quant.bits=4", "quant.linear_bits=8"],
    "kmeans4emb_int8lin_ptq": ["quant=ptq", "quant.bits=4", "quant.scheme=kmeans", "quant.linear_bits=8",
                               "quant.linear_scheme=symmetric"],
    # structured pruning ships a smaller dense model, so its savings multiply with quantization's
    "struct20_kmeans4_int8": ["prune=structured", "prune.ratio=0.2", "finetune.epochs=2", "finetune.lr=1e-3",
                              "quant=ptq", "quant.bits=4", "quant.scheme=kmeans", "quant.linear_bits=8",
                              "quant.linear_scheme=symmetric"],
}
EMB4_ROWS = ("int4_ptq", "int4emb_int8lin_ptq", "kmeans4emb_int8lin_ptq")
COLS = {"final/hr_at_10": "HR@10", "final/ndcg_at_10": "NDCG@10", "artifact_mb": "artifact MB",
        "final/compression_ratio": "compression x", "final/quant_embedding_ratio": "embedding bytes x",
        "final/latency_p50_ms": "p50 ms", "final/latency_p99_ms": "p99 ms", "final/throughput_per_s": "pairs/s",
        "final/latency_full_p50_ms": "full-catalogue p50 ms", "tags.latency_backend": "backend",
        "final/latency_p50_ms_onnx": "ORT fp32 p50 ms", "final/latency_p50_ms_onnx_int8": "ORT int8 p50 ms",
        "final/speedup_p50": "speed-up p50 (same runtime)", "hr_loss_pt": "HR@10 loss (pt)"}


def run_rows(rows: list[str], overrides: list[str]) -> None:
    """One pipeline job per row, composed through Hydra's compose API."""
    from hydra import compose, initialize_config_dir

    from recsys.pipeline import run

    for row in rows:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=["experiment=quant_table", *ROWS[row], *overrides,
                                               f"tracking.run_name=quant_table:{row}"])
        print(f"\n=== {row}: {' '.join(ROWS[row] + overrides)}", flush=True)
        run(cfg)


def build_table(uri: str, experiment: str, rows: list[str]) -> pd.DataFrame:
    """Latest finished run of every row -> one DataFrame (metrics as logged, plus derived MB and HR loss)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs(experiment_names=[experiment], filter_string="attributes.status = 'FINISHED'",
                            order_by=["start_time DESC"])
    df["row"] = df["tags.mlflow.runName"].str.removeprefix("quant_table:")
    df = df[df["row"].isin(rows)].drop_duplicates("row").set_index("row").reindex([r for r in rows])
    df.columns = [c.removeprefix("metrics.") for c in df.columns]
    df["artifact_mb"] = df["final/artifact_bytes"] / 1e6
    df["hr_loss_pt"] = 100 * (df["dense/hr_at_10"] - df["final/hr_at_10"])
    return df


def targets(df: pd.DataFrame) -> list[str]:
    """The issue's acceptance targets, each marked met / missed with the figures."""
    out = []

    def line(name: str, ok: bool, text: str) -> None:
        out.append(f"- [{'met' if ok else 'MISSED'}] {name}: {text}")

    if "int8_ptq" in df.index and pd.notna(df.loc["int8_ptq", "hr_loss_pt"]):
        r = df.loc["int8_ptq"]
        line("int8 <= 0.5 pt HR@10 loss at >= 3.5x fewer bytes", r.hr_loss_pt <= 0.5 and r["final/compression_ratio"] >= 3.5,
             f"{r.hr_loss_pt:.2f} pt, {r['final/compression_ratio']:.2f}x")
    for row in (r for r in EMB4_ROWS if r in df.index and pd.notna(df.loc[r, "hr_loss_pt"])):
        r = df.loc[row]
        line(f"4-bit embeddings <= 1 pt loss at >= 7x fewer embedding bytes ({row})",
             r.hr_loss_pt <= 1.0 and r["final/quant_embedding_ratio"] >= 7,
             f"{r.hr_loss_pt:.2f} pt, embedding bytes {r['final/quant_embedding_ratio']:.2f}x "
             f"(whole artifact {r['final/compression_ratio']:.2f}x)")
    ok = df[(df["hr_loss_pt"] <= 1.0)]
    best = ok["final/compression_ratio"].idxmax() if len(ok) else None
    if best is not None:
        line(">= 8x fewer bytes at <= 1 pt loss (best setting)", ok.loc[best, "final/compression_ratio"] >= 8,
             f"best within 1 pt: {best} at {ok.loc[best, 'final/compression_ratio']:.2f}x, "
             f"{ok.loc[best, 'hr_loss_pt']:.2f} pt")
    if "int8_ptq" in df.index and "fp32" in df.index:
        a, b = df.loc["int8_ptq", "final/latency_p50_ms"], df.loc["fp32", "final/latency_p50_ms"]
        out.append(f"- int8 batch-1 p50 {a:.3f} ms vs fp32 {b:.3f} ms on eager PyTorch: int8 is "
                   f"{'FASTER' if a < b else 'SLOWER'} ({b / a:.2f}x) at this size")
    return out


def log_report(uri: str, experiment: str, md: str, df: pd.DataFrame) -> str:
    """A report run (tag recsys.kind=report) holding the table as markdown + CSV and per-row metrics."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="quant_table report", tags={"recsys.kind": "report"}) as r:
        d = Path(tempfile.mkdtemp())
        write_text(d / "quant_table.md", with_provenance(md))
        write_csv(d / "quant_table.csv", df)
        mlflow.log_artifact(str(d / "quant_table.md"))
        mlflow.log_artifact(str(d / "quant_table.csv"))
        for row, r_ in df.iterrows():
            mlflow.log_metrics({f"{row}/{k.split('/')[-1]}": float(v) for k, v in r_.items()
                                if k in COLS and isinstance(v, (int, float)) and pd.notna(v)})
        return r.info.run_id


def main(argv: list[str] | None = None) -> int:
    """Run the rows (unless --table-only), then print and log the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--uri", default=None, help="MLflow URI (default: the config's tracking.uri)")
    args, overrides = ap.parse_known_args(argv)
    rows = args.rows.split(",")
    if not args.table_only:
        run_rows(rows, overrides)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=quant_table", *overrides])
    from recsys.tracking import normalise_uri

    uri = args.uri or normalise_uri(cfg.tracking.uri)
    df = build_table(uri, cfg.tracking.experiment, rows)
    table = df[[c for c in COLS if c in df.columns]].rename(columns=COLS)
    md = table.to_markdown(floatfmt=".4g") if _has_tabulate() else table.to_string()
    notes = targets(df)
    md += (f"\n\nlatency: {int(cfg.bench.threads)} thread(s), reloaded artifact; 'backend' = the runtime of p50/p99/"
           "throughput; ORT columns run the same artifact's (dequantized) weights in ONNX Runtime fp32 / ORT's own "
           "int8 (quantize_dynamic).\n" + "\n".join(notes))
    print("\n" + md)
    print(f"\nreport run: {log_report(uri, cfg.tracking.experiment, md, df)}")
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
