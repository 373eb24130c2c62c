"""Benchmark of the foundation job: NeuMF on ml-1m-loo with the NCF paper's factor-32 setting.

Prints and logs (MLflow, experiment ``bench-ncf``): training samples/s and seconds per epoch of the harness, the same
figure for a bare PyTorch loop over the same model/batches (measured in this run, so the overhead is a ratio on one
noisy machine), evaluation seconds (sampled protocol and full ranking of every test user over every item), and the
final quality metrics.

    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python experiments/ncf_benchmark.py            # no pre-training
    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python experiments/ncf_benchmark.py --pretrain
    ... --epochs 2 --data ml-100k                                                                 # a quick look

``--compare PATH [PATH ...]`` instead trains NeuMF f=32 [128,64,32] once per PATH (a comma-separated list of Hydra
overrides) at each ``--batch-sizes`` entry, alternately in this one process, and prints training-only samples/s per path,
the speed ratio to the first path, seconds of each epoch (the within-job slow-down shows there) and test HR@10 /
NDCG@10 (best validation epoch, as the harness keeps it), with torch threads, git commit and load average:

    # torch's CPU-default Adam loop vs the fused Adam kernel (train.optimizer=adam, the default): ~6 min alone
    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python experiments/ncf_benchmark.py --epochs 2 \
        --compare train.optimizer=adam_loop train.optimizer=adam
    # ``--compare-sparse`` = ``--compare train.sparse=false train.sparse=rowwise train.sparse=rowwise_lazy
    # train.sparse=true`` (dense Adam, row-wise Adam, its lazy variant, SparseAdam); --flush-denormal: subnormal floats
    # flushed to zero (torch.set_flush_denormal) for the whole run. Ratios are meaningful on a busy machine too,
    # absolute samples/s are not.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from recsys import tracking  # noqa: E402
from recsys.models import build_model  # noqa: E402
from recsys.pipeline import run  # noqa: E402
from recsys.tasks.base import OPTIMIZERS, get_family  # noqa: E402


def bare_loop_samples_per_s(cfg, data, max_batches: int = 600) -> float:
    """Samples/s of a plain PyTorch loop (no Lightning) over the harness's own batches and model."""
    family = get_family(cfg.model.task)
    from omegaconf import OmegaConf

    model = build_model(family.model_spec(OmegaConf.to_container(cfg.model, resolve=True), data))
    opt = OPTIMIZERS[cfg.train.optimizer](model.parameters(), lr=cfg.train.lr)   # the harness's optimizer
    loader = family.make_datamodule(data, cfg).train_dataloader()
    n, t0 = 0, None
    for k, (u, i, y) in enumerate(loader):
        if k == 20:  # warm-up batches excluded
            t0, n = time.perf_counter(), 0
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(u, i), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(u)
        if k >= max_batches:
            break
    return n / (time.perf_counter() - t0)


class EpochClock(__import__("lightning").pytorch.Callback):
    """Training-only seconds of each epoch (validation excluded)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self._t0)


def provenance() -> str:
    """Commit, torch version/threads and load average: what a printed table was measured with."""
    import os
    import subprocess

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        commit += "+dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return (f"commit {commit}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
            f"flush_denormal {FLUSH_DENORMAL}, "
            f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}, cpus {os.cpu_count()}")


FLUSH_DENORMAL = False


def compare(args) -> None:
    """Train NeuMF once per path (override set), same data/seed/epochs, alternately in one process (module docstring)."""
    import lightning as L
    from omegaconf import OmegaConf

    from recsys.tasks.fit import StageTrainer

    base = [f"data={args.data}", "model=neumf", "model.factors=32", "model.mlp_layers=[128,64,32]",
            f"train.epochs={args.epochs}", "train.use_cache=false", "trainer.enable_progress_bar=false",
            "eval.full_ranking=false", *args.overrides]
    paths = [[o for o in p.split(",") if o] for p in args.compare]
    print(f"start: {provenance()}", flush=True)
    rows = []
    data = None
    for bs in args.batch_sizes:
        for path in paths:
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
                cfg = compose("config", overrides=[*base, f"train.batch_size={bs}", *path])
            family = get_family(cfg.model.task)
            data = data or family.load_data(cfg)
            L.seed_everything(cfg.seed, workers=True)
            model = build_model(family.model_spec(OmegaConf.to_container(cfg.model, resolve=True), data))
            clock = EpochClock()
            info = StageTrainer(family, data, cfg).train(model, "dense", callbacks=[clock])
            q = family.evaluate(model, data, cfg)
            n = family.samples_per_epoch(data, cfg) * len(clock.seconds)
            rows.append({"batch": bs, "path": " ".join(path) or "(defaults)", "samples_per_s": n / sum(clock.seconds),
                         "epoch_seconds": clock.seconds, "best_epoch": info.get("best_epoch", -1),
                         "hr_at_10": q["hr_at_10"], "ndcg_at_10": q["ndcg_at_10"]})
            r = rows[-1]
            print(f"batch {bs:5d} {r['path']:32s} samples/s {r['samples_per_s']:>10,.0f}  epoch s "
                  f"{' '.join(f'{x:.1f}' for x in clock.seconds)}  best epoch {r['best_epoch']:.0f}  "
                  f"HR@10 {r['hr_at_10']:.4f}  NDCG@10 {r['ndcg_at_10']:.4f}", flush=True)
    print(f"\n== NeuMF f=32 [128,64,32] on {args.data}, {args.epochs} epochs, training time only ==")
    print(f"end: {provenance()}")
    print("| batch | path | samples/s | s/epoch (each) | HR@10 | NDCG@10 | speed ÷ first path |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        first = next(x for x in rows if x["batch"] == r["batch"])
        ratio = r["samples_per_s"] / first["samples_per_s"]
        print(f"| {r['batch']} | {r['path']} | {r['samples_per_s']:,.0f} | "
              f"{' / '.join(f'{x:.1f}' for x in r['epoch_seconds'])} | {r['hr_at_10']:.4f} | {r['ndcg_at_10']:.4f} | "
              f"{ratio:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-1m-loo")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--pretrain", action="store_true")
    ap.add_argument("--experiment", default="bench-ncf")
    ap.add_argument("--compare", nargs="+", metavar="PATH", help="override sets to train side by side (see above)")
    ap.add_argument("--compare-sparse", action="store_true",
                    help="= --compare train.sparse=false train.sparse=rowwise train.sparse=rowwise_lazy train.sparse=true")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2, as the peers table)")
    ap.add_argument("--flush-denormal", action="store_true", help="torch.set_flush_denormal(True) for the run")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 2048])
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. train.lr=0.002")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.flush_denormal:
        global FLUSH_DENORMAL
        FLUSH_DENORMAL = torch.set_flush_denormal(True)
    if args.compare_sparse:
        args.compare = ["train.sparse=false", "train.sparse=rowwise", "train.sparse=rowwise_lazy", "train.sparse=true"]
    if args.compare:
        compare(args)
        return
    overrides = [f"data={args.data}", "model=neumf", "model.factors=32", "model.mlp_layers=[128,64,32]",
                 f"train.epochs={args.epochs}", f"model.pretrain={str(args.pretrain).lower()}", "train.use_cache=false",
                 f"tracking.experiment={args.experiment}", "trainer.enable_progress_bar=false", *args.overrides]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=overrides)
    family = get_family(cfg.model.task)
    data = family.load_data(cfg)
    bare = bare_loop_samples_per_s(cfg, data)
    t0 = time.perf_counter()
    run(cfg)
    wall = time.perf_counter() - t0
    client = MlflowClient(tracking.normalise_uri(cfg.tracking.uri))
    exp = client.get_experiment_by_name(args.experiment)
    r = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    m = r.data.metrics
    extra = {"bench/bare_loop_samples_per_s": bare, "bench/job_wall_seconds": wall,
             "bench/harness_over_bare": m["dense/samples_per_s"] / bare, "bench/torch_threads": torch.get_num_threads()}
    client.log_batch(r.info.run_id, metrics=[__import__("mlflow").entities.Metric(k, float(v), int(time.time() * 1000), 0)
                                             for k, v in extra.items()])
    print(f"\n== NeuMF f=32 [128,64,32] on {args.data}, {args.epochs} epochs, pretrain={args.pretrain}, "
          f"torch threads={torch.get_num_threads()} ==")
    rows = [("training samples/s (harness)", m["dense/samples_per_s"]), ("training samples/s (bare loop)", bare),
            ("harness / bare", extra["bench/harness_over_bare"]), ("seconds per epoch", m["dense/seconds_per_epoch"]),
            ("best epoch (by validation HR)", m.get("dense/best_epoch", float("nan"))),
            ("sampled eval seconds (test)", m["dense/eval_seconds"]),
            ("full-ranking eval seconds (all test users x all items)", m["dense/full_eval_seconds"]),
            ("HR@10", m["dense/hr_at_10"]), ("NDCG@10", m["dense/ndcg_at_10"]),
            ("recall@10 (full ranking)", m["dense/recall_at_10"]), ("whole job wall seconds", wall)]
    for name, v in rows:
        print(f"{name:58s} {v:>14,.4f}" if v < 100 else f"{name:58s} {v:>14,.0f}")
    print(f"MLflow run {r.info.run_id} in experiment {args.experiment!r}")


if __name__ == "__main__":
    main()
