"""Per model on its main dataset, dense and at one compressed setting: quality, seconds per epoch, samples (events)/s,
artifact bytes, batch-1 latency. Each row is a full pipeline job logged to MLflow; the table is printed and logged too.

    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python experiments/models_benchmark.py --epochs 3
    ... --ranking-data ml-1m-loo          # DeepFM beside NeuMF on ml-1m-loo (default ml-100k-pos4: same split for both)
    ... --compress quant=ptq              # or e.g. "prune=magnitude prune.ratio=0.5"
    ... --ranking-data ml-1m-loo --neumf "model.factors=32 model.mlp_layers=[128,64,32]" --neumf-epochs 20 \
        --gru-hidden 480 --gru-epochs 10 --root .   # the issue-5 table: paper-size NeuMF, official GRU4Rec width

Training threads are pinned (``--threads``, logged as the tag ``train_threads``); latency uses ``bench.threads`` (1).
GRU4Rec defaults to the official YooChoose cross-entropy settings (Adagrad lr 0.07, 48 parallel sessions, 2048
pop^0.2 negatives, logQ 1, shared embedding, dropout 0.2) except the width: ``--gru-hidden`` (official: 480).
SASRec runs conf/model/sasrec.yaml (2 blocks, 1 head, Adam lr 0.001) at ``--sasrec-hidden`` / ``--sasrec-max-len``;
its latency request re-encodes a full ``max_len`` window (an upper bound). Reduced-size check (figures not for speed):
    ... --models sasrec --epochs 1 --sasrec-hidden 16 --sasrec-max-len 10 --root /tmp/sasrec-bench \
        --bench "bench.requests=50 bench.warmup=5 bench.full_catalogue_requests=3 bench.throughput_repeats=2 \
        bench.throughput_batch=512"
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.pipeline import run  # noqa: E402
from recsys.provenance import with_provenance  # noqa: E402

COLS = [("auc", "AUC"), ("logloss", "logloss"), ("hr_at_10", "HR@10"), ("ndcg_at_10", "NDCG@10"),
        ("recall_at_20", "recall@20"), ("mrr_at_20", "MRR@20"), ("seconds_per_epoch", "s/epoch"),
        ("samples_per_s", "samples/s"), ("artifact_bytes", "artifact bytes"), ("latency_p50_ms", "p50 ms"),
        ("latency_p99_ms", "p99 ms"), ("compression_ratio", "x smaller"), ("speedup_p50", "x faster")]


def jobs(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(row label, overrides) of every job."""
    ranking = [f"data={args.ranking_data}", f"train.epochs={args.epochs}"]
    gru = ["data=yoochoose", "model=gru4rec", f"model.hidden_size={args.gru_hidden}", "train.optimizer=adagrad",
           "train.lr=0.07", f"train.epochs={args.gru_epochs or args.epochs}"]
    neumf = ["model=neumf", f"data={args.ranking_data}", f"train.epochs={args.neumf_epochs or args.epochs}",
             *shlex.split(args.neumf)]
    sasrec = ["data=yoochoose", "model=sasrec", f"model.hidden_size={args.sasrec_hidden}",
              f"model.max_len={args.sasrec_max_len}", f"train.epochs={args.sasrec_epochs or args.epochs}"]
    base = {"neumf": neumf, "deepfm": ["model=deepfm", *ranking], "gru4rec": gru, "sasrec": sasrec,
            "deepfm-criteo": ["model=deepfm", "data=criteo", f"train.epochs={args.epochs}", "train.batch_size=512"]}
    out = []
    for name in args.models:
        out.append((f"{name} dense", base[name]))
        if args.compress:
            out.append((f"{name} {args.compress}", base[name] + shlex.split(args.compress)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["neumf", "deepfm", "gru4rec", "sasrec", "deepfm-criteo"])
    p.add_argument("--ranking-data", default="ml-100k-pos4")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--gru-epochs", type=int, default=None)
    p.add_argument("--gru-hidden", type=int, default=100)
    p.add_argument("--sasrec-epochs", type=int, default=None)
    p.add_argument("--sasrec-hidden", type=int, default=64)
    p.add_argument("--sasrec-max-len", type=int, default=50)
    p.add_argument("--neumf", default="", help="extra NeuMF overrides, e.g. \"model.factors=32 "
                   "model.mlp_layers=[128,64,32]\" (the model of the other ml-1m-loo tables)")
    p.add_argument("--neumf-epochs", type=int, default=None, help="NeuMF's train.epochs (default --epochs); with "
                   "--root pointing at an existing store, a matching cached dense model is reused")
    p.add_argument("--compress", default="quant=ptq")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--root", default=None, help="paths.root_dir (MLflow store + caches); default a temp dir")
    p.add_argument("--bench", default="bench.requests=500 bench.warmup=50 bench.full_catalogue_requests=10 "
                                      "bench.throughput_repeats=5 bench.throughput_batch=4096")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.root or tempfile.mkdtemp(prefix="models-benchmark-"))
    rows: dict[str, dict[str, float]] = {}
    for label, overrides in jobs(args):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", label.replace("=", "-"))   # a Hydra-safe run name
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[f"paths.root_dir={root}", "trainer.enable_progress_bar=false",
                                               "tracking.experiment=models-benchmark", f"tracking.run_name={name}",
                                               *shlex.split(args.bench), *overrides])
        print(f"\n=== {label}: {' '.join(overrides)}", flush=True)
        run(cfg)
        client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
        exp = client.get_experiment_by_name("models-benchmark")
        r = [x for x in client.search_runs([exp.experiment_id]) if x.info.run_name == name][0]
        client.set_tag(r.info.run_id, "train_threads", str(args.threads))
        m = r.data.metrics
        # training speed is the dense model's (the compressed row's dense model comes from the cache)
        rows[label] = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("final/")}
        for k in ("seconds_per_epoch", "samples_per_s"):
            if f"dense/{k}" in m:
                rows[label][k] = m[f"dense/{k}"]
    cols = [c for c in COLS if any(c[0] in r for r in rows.values())]
    lines = ["| job | " + " | ".join(h for _, h in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, r in rows.items():
        cells = [("–" if k not in r else f"{r[k]:,.0f}" if k in ("artifact_bytes", "samples_per_s")
                  else f"{r[k]:.4f}" if r[k] < 10 else f"{r[k]:.1f}") for k, _ in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print("\n" + table)
    print(f"\ntrain threads {args.threads}; latency bench.threads=1 on the reloaded artifact; store: "
          f"sqlite:///{root}/mlruns/mlflow.db (experiment models-benchmark)")
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("models-benchmark")
    summary = client.create_run(exp.experiment_id, run_name="summary", tags={"train_threads": str(args.threads)})
    client.log_text(summary.info.run_id, with_provenance(table), "models_benchmark.md")
    client.set_terminated(summary.info.run_id)


if __name__ == "__main__":
    main()
