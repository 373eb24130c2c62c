"""Distillation + low-rank table (issue 7): NeuMF teacher (f=32, MLP [128,64,32]) vs students f=16/8/4 (MLP [4f,2f,f])
trained with pointwise KD, with ranking distillation, and without distillation (same init, seed, epochs), plus truncated
SVD of the teacher's embeddings at rank 4/8/16 (+2 fine-tune epochs). Every job is a normal pipeline run
(``experiment=distill_table``) logged to MLflow (experiment ``distill_table``); the table is mean ± std over seeds,
printed as markdown and logged (CSV + markdown) to a summary run.

    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python experiments/distill_table.py --data ml-100k
    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python experiments/distill_table.py              # ml-1m-loo (slow)
    ... --table-only                                                # rebuild the table from the runs already logged
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from recsys import tracking  # noqa: E402
from recsys.pipeline import run  # noqa: E402
from recsys.provenance import with_provenance  # noqa: E402

METRICS = ["hr_at_10", "ndcg_at_10", "params_total", "artifact_bytes", "latency_full_p50_ms", "latency_p50_ms"]
BENCH = ["bench.requests=500", "bench.warmup=50", "bench.full_catalogue_requests=30", "bench.throughput_repeats=5",
         "trainer.enable_progress_bar=false"]


def jobs(factors: list[int], ranks: list[int], student_epochs: int | None = None,
         losses: tuple[str, ...] = ("kd", "rd")) -> list[tuple[str, list[str]]]:
    """(name, overrides) of every job of one seed."""
    out = []
    for f in factors:
        student = [f"distill.student.factors={f}", f"distill.student.mlp_layers=[{4 * f},{2 * f},{f}]",
                   *([f"distill.epochs={student_epochs}"] if student_epochs else [])]
        if "kd" in losses:
            out.append((f"kd f={f}", ["distill=kd", *student, "distill.baseline=true"]))
        if "rd" in losses:   # its no-KD twin is the kd job's (same student, seed and epochs)
            out.append((f"rd f={f}", ["distill=ranking", *student, f"distill.baseline={'kd' not in losses}"]))
    for r in ranks:
        out.append((f"svd r={r}", ["distill=none", "lowrank=svd", f"lowrank.rank={r}", "finetune.epochs=2"]))
    return out


def run_all(args: argparse.Namespace) -> None:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for seed in args.seeds:
            for name, over in jobs(args.factors, args.ranks, args.student_epochs, tuple(args.losses)):
                cfg = compose("config", overrides=["experiment=distill_table", f"data={args.data}", f"seed={seed}",
                                                   f"tracking.experiment={args.experiment}",
                                                   f"paths.root_dir={args.root}",
                                                   f"tracking.run_name='distill_table {name} seed={seed}'",
                                                   *([f"train.epochs={args.epochs}"] if args.epochs else []),
                                                   *BENCH, *args.override, *over])
                print(f"=== {name} seed={seed}", flush=True)
                run(cfg)


def rows_of(run) -> list[dict]:
    """Table rows one MLflow run contributes: teacher, the student (or factorised model), and its no-KD twin."""
    m, p = run.data.metrics, run.data.params
    seed = int(p["seed"])
    out = [{"row": f"teacher f={p['model.factors']}", "seed": seed, **{k: m.get(f"dense/{k}") for k in METRICS}}]
    if p.get("distill.method") not in (None, "none"):
        f = p["distill.student.factors"]
        label = {"kd": "student KD (pointwise)", "ranking": "student RD (Tang & Wang)"}[p["distill.method"]]
        out.append({"row": f"{label} f={f}", "seed": seed, **{k: m.get(f"final/{k}") for k in METRICS}})
        if "final/nokd_hr_at_10" in m:
            twin = {k: m.get(f"final/{k}") for k in METRICS}
            twin.update(hr_at_10=m["final/nokd_hr_at_10"], ndcg_at_10=m["final/nokd_ndcg_at_10"])
            out.append({"row": f"student no KD f={f}", "seed": seed, **twin})
    elif p.get("lowrank.method") == "svd":
        out.append({"row": f"SVD embeddings rank={p['lowrank.rank']} (+ft)", "seed": seed,
                    **{k: m.get(f"final/{k}") for k in METRICS}})
    return out


def table(uri: str, experiment: str, data: str) -> pd.DataFrame:
    """mean and std over seeds of every row (flat columns ``<metric>`` / ``<metric>_std``), teacher once per seed."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=5000)
            if r.data.tags.get("dataset") == data and r.info.status == "FINISHED" and "summary" not in r.data.tags]
    df = pd.DataFrame([row for r in runs for row in rows_of(r)]).drop_duplicates(["row", "seed"])
    g = df.groupby("row", sort=False)
    agg = g[METRICS].mean().join(g[METRICS].std().add_suffix("_std")).join(g["seed"].nunique().rename("seeds"))
    teacher = agg.loc[[i for i in agg.index if i.startswith("teacher")]].iloc[0]
    agg["hr_vs_teacher"] = agg["hr_at_10"] / teacher["hr_at_10"]
    agg["params_vs_teacher"] = agg["params_total"] / teacher["params_total"]
    def key(r: str) -> tuple:
        return not r.startswith("teacher"), r.startswith("SVD"), -int(r.split("f=")[-1]) if "f=" in r else 0, r

    return agg.loc[sorted(agg.index, key=key)]


def markdown(agg: pd.DataFrame) -> str:
    """The table for people (metric keys stay *_at_* in the CSV; headers use the @ form)."""
    def pm(a: pd.Series, k: str, fmt: str = "{:.4f}") -> str:
        std = a[f"{k}_std"]
        return fmt.format(a[k]) + ("" if pd.isna(std) else " ± " + fmt.format(std))

    lines = ["| model | seeds | HR@10 | NDCG@10 | HR / teacher | params | params / teacher | artifact KB | "
             "full-catalogue p50 ms | 1x100 p50 ms |", "|---" * 10 + "|"]
    for r, a in agg.iterrows():
        lines.append(f"| {r} | {int(a['seeds'])} | {pm(a, 'hr_at_10')} | {pm(a, 'ndcg_at_10')} | "
                     f"{a['hr_vs_teacher']:.3f} | {a['params_total']:,.0f} | {a['params_vs_teacher']:.3f} | "
                     f"{a['artifact_bytes'] / 1e3:,.1f} | {pm(a, 'latency_full_p50_ms', '{:.3f}')} | "
                     f"{pm(a, 'latency_p50_ms', '{:.3f}')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-1m-loo")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--factors", type=int, nargs="*", default=[16, 8, 4], help="student sizes (none: no KD rows)")
    ap.add_argument("--ranks", type=int, nargs="*", default=[4, 8, 16], help="SVD ranks (none: no low-rank rows)")
    ap.add_argument("--losses", nargs="+", default=["kd", "rd"], choices=["kd", "rd"],
                    help="kd: pointwise KD (+ the no-KD twin); rd: ranking distillation")
    ap.add_argument("--epochs", type=int, default=None, help="train.epochs override (default: train config's 20); "
                    "note it changes the teacher's cache key, so the teacher is retrained")
    ap.add_argument("--student-epochs", type=int, default=None, help="distill.epochs: epochs of each student and of "
                    "its no-KD twin (default: train.epochs); the cached teacher is kept")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training (latency uses bench.threads=1)")
    ap.add_argument("--experiment", default="distill_table")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every job, e.g. "
                    "train.batch_size=8192")
    ap.add_argument("--root", default=str(ROOT), help="paths.root_dir: MLflow store + dense-model cache live here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.table_only:
        run_all(args)
    uri = tracking.normalise_uri(f"sqlite:///{args.root}/mlruns/mlflow.db")
    agg = table(uri, args.experiment, args.data)
    md = markdown(agg)
    print(f"\n{args.data}: NeuMF teacher vs students (mean ± std over seeds; latency 1 thread, eager PyTorch, reloaded "
          f"artifact; training threads={args.threads})\n\n{md}\n")
    with tracking.start_run(uri, args.experiment, f"distill_table summary {args.data}",
                            tags={"dataset": args.data, "summary": "true"}) as tr:
        tr.log_params({"torch_threads": args.threads, "seeds": ",".join(map(str, args.seeds)), "data": args.data})
        tr.log_text(with_provenance(md), "distill_table.md")
        tr.log_text(agg.to_csv(), "distill_table.csv")


if __name__ == "__main__":
    main()
