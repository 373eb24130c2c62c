"""Scale benchmark (issue 13): NeuMF f=32 [128,64,32] end to end on an interaction file (e.g. the ML-20M-shaped one
from ``experiments/make_synthetic.py``) through the generic reader (``data=csv``), the same path ``data=ml-20m`` uses.

Prints, per stage, wall seconds, the process's CPU seconds (user + sys, all threads: the figure to judge a stage
by when the machine is shared) and the process's peak RSS so far: read + split, training negatives of one epoch, one
training epoch (training only, with its samples/s), sampled evaluation (test + validation), full-ranking evaluation
(every test user over every item, known items masked, blocked over users: never the full score matrix), export
(dense artifact written and reloaded) and latency. ``--baseline ml-1m-loo`` runs the same stages on ML-1M first, so the
two columns come from one process and one machine state.

    python experiments/make_synthetic.py --out /tmp/syn/ml20m/interactions.tsv             # ~1 min alone
    RECSYS_DATA_DIR=../shared/datasets python experiments/scale_benchmark.py --file /tmp/syn/ml20m/interactions.tsv
    # a reduced check (ML-20M's items, a tenth of its users, 2 M rows):
    #   make_synthetic.py --users 13849 --items 26744 --rows 2000000 --out /tmp/syn/s2m10/interactions.tsv
    #   then --file /tmp/syn/s2m10/interactions.tsv --baseline none --max-train-minutes 3

Targets (2 cores, alone): peak RSS <= 6 GB, read + split <= 60 s, samples/s within 20 % of ML-1M, full ranking
<= 10 min. Timings are only meaningful on a quiet machine.

Bounded: the training epoch stops after ``--max-train-minutes`` (default 20; samples/s is then from the batches done,
and the table says so), so the whole ML-20M run takes about read+split + negatives + 20 min + evaluation (~10 min)
at most. ``--sparse`` (default auto) is ``train.sparse`` (``recsys.tasks.optim.resolve_sparse``: auto is row-wise
Adam on the embedding tables for Adam without weight decay); the path each dataset used is printed and logged. Peak RSS
is the process's (cumulative) peak after each stage, the baseline running first; a sampler thread also names the stage
and the code running at the highest RSS it saw (every 0.1 s).
The table and every figure are logged to MLflow (``tracking.uri``: $RECSYS_TRACKING_URI or mlruns/, experiment
``--experiment``), one run per invocation.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from recsys.data.steps import StepChunk  # noqa: E402
from recsys.export.artifact import load_artifact, save_artifact  # noqa: E402
from recsys.models import build_model  # noqa: E402
from recsys.tasks.base import get_family  # noqa: E402
from recsys.tasks.fit import StageTrainer, steps_per_call  # noqa: E402

MODEL = ["model=neumf", "model.factors=32", "model.mlp_layers=[128,64,32]"]


class PeakWatch(threading.Thread):
    """Samples the process's RSS every ``every`` s and keeps, for its highest sample, the stage then running and the
    main thread's innermost frames: where the peak happened, not only after which stage (ru_maxrss)."""

    def __init__(self, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.every, self.stage, self.peak, self.peak_noted, self.where = every, "start-up", 0.0, 0.0, ("", [])
        self._main = threading.main_thread().ident
        self._page = os.sysconf("SC_PAGE_SIZE")

    def run(self) -> None:
        while True:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * self._page / 1024 ** 3
            if rss > self.peak:
                self.peak = rss
                if rss > self.peak_noted + 0.05:   # a stack per 50 MB of new peak, not per sample
                    frame = sys._current_frames().get(self._main)
                    # importlib's frozen frames name no file: left out, so a peak during imports shows who imports
                    stack = [fr for fr in (traceback.extract_stack(frame) if frame is not None else [])
                             if not fr.filename.startswith("<frozen")][-6:]
                    self.where = (self.stage, [f"{Path(fr.filename).name}:{fr.lineno} {fr.name}" for fr in stack])
                    self.peak_noted = rss
            time.sleep(self.every)


WATCH = PeakWatch()


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


class TrainBudget(L.Callback):
    """Training-only seconds and samples of the (one) epoch; stops it after ``minutes`` (0: never)."""

    def __init__(self, minutes: float) -> None:
        self.limit, self.seconds, self.samples, self.stopped = 60.0 * minutes, 0.0, 0, False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.samples += sum(len(b[0]) for b in batch) if isinstance(batch, StepChunk) else len(batch[0])
        if self.limit and time.perf_counter() - self._t0 > self.limit:
            trainer.should_stop, self.stopped = True, True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = time.perf_counter() - self._t0


def run_stages(data_overrides: list[str], args: argparse.Namespace, cache_dir: str) -> tuple[dict, dict]:
    """({stage: (seconds, peak RSS GB after it)}, facts) for one dataset."""
    from recsys.tasks.optim import resolve_sparse

    overrides = [*data_overrides, *MODEL, "train.epochs=1", f"train.batch_size={args.batch_size}",
                 "train.use_cache=false", f"train.sparse={args.sparse}", "trainer.enable_progress_bar=false",
                 "eval.full_ranking=true", f"paths.cache_dir={cache_dir}", *args.overrides]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=overrides)
    # what a plain run picks: train.steps_per_call=auto resolved without this stage's budget callback (with it,
    # auto would fall back to one step per call)
    cfg.train.steps_per_call = steps_per_call(cfg.train.get("steps_per_call", "auto"), cfg.trainer, [])
    family = get_family(cfg.model.task)
    out: dict[str, tuple[float, float, float | None]] = {}   # stage: (wall s, peak RSS GB, CPU s or None)

    def stage(name, fn):
        WATCH.stage = f"{data_overrides[0]}: {name}"
        t0, c0 = time.perf_counter(), time.process_time()
        r = fn()
        out[name] = (time.perf_counter() - t0, peak_rss_gb(), time.process_time() - c0)
        print(f"  {name:28s} {out[name][0]:9.1f} s   CPU {out[name][2]:7.1f} s   peak RSS {out[name][1]:6.2f} GB",
              flush=True)
        return r

    data = stage("read + split", lambda: family.load_data(cfg))
    # a throwaway datamodule, freed with its positives lookup (463 MB at ML-20M size) before training builds its own,
    # as a real run holds only one
    stage("negatives (1 epoch)", lambda: (family.make_datamodule(data, cfg).train_data.epoch_tensors(0), None)[1])
    L.seed_everything(cfg.seed, workers=True)
    model = build_model(family.model_spec(OmegaConf.to_container(cfg.model, resolve=True), data))
    sparse = resolve_sparse(family._sparse_setting(cfg, model), cfg.train.optimizer, cfg.train.weight_decay, model)
    facts = {"users": data.n_users, "items": data.n_items, "train_rows": len(data.train_users),
             "optimizer_path": {"": "dense Adam", "sparse": "sparse (SparseAdam on embeddings)",
                                "rowwise": "row-wise Adam on embeddings (train.sparse=rowwise)",
                                "rowwise_lazy": "row-wise lazy Adam on embeddings",
                                "scatter": "dense Adam, table gradients scattered (train.sparse=scatter)"
                                }.get(sparse, str(sparse))}
    print(f"  {data.n_users:,} users x {data.n_items:,} items, {len(data.train_users):,} train rows; "
          f"train.sparse={args.sparse} -> {facts['optimizer_path']}", flush=True)
    budget = TrainBudget(args.max_train_minutes)
    stage("one epoch (fit + val)", lambda: StageTrainer(family, data, cfg).train(model, "dense", callbacks=[budget],
                                                                                  select_best=False))
    n = family.samples_per_epoch(data, cfg)
    facts["epoch_fraction"] = budget.samples / n
    out["training samples/s"] = (budget.samples / budget.seconds, peak_rss_gb(), None)
    cut = (f"; STOPPED by --max-train-minutes {args.max_train_minutes:g} after {facts['epoch_fraction']:.1%} of the "
           "epoch") if budget.stopped else ""
    print(f"  {'training samples/s':28s} {out['training samples/s'][0]:9,.0f}   (training only, "
          f"{budget.seconds:.1f} s{cut})", flush=True)
    q = stage("evaluation (all)", lambda: family.evaluate(model, data, cfg))
    out["sampled eval (test)"] = (q["eval_seconds"], peak_rss_gb(), None)
    out["full-ranking eval"] = (q["full_eval_seconds"], peak_rss_gb(), None)
    print(f"  of which sampled test {q['eval_seconds']:.1f} s, full ranking {q['full_eval_seconds']:.1f} s; "
          f"HR@10 {q['hr_at_10']:.4f}, recall@10 {q['recall_at_10']:.4f}", flush=True)
    path = Path(cache_dir) / "model.pt"
    stage("export (save + reload)", lambda: (save_artifact(model, path), load_artifact(path)))
    stage("latency", lambda: family.latency(model, data, cfg))
    return out, facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", type=Path, required=True, help="TSV with header user item timestamp")
    ap.add_argument("--baseline", default="ml-1m-loo", help="data preset run first for comparison, or 'none'")
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sparse", default="auto", choices=["auto", "true", "false", "rowwise", "rowwise_lazy", "scatter"],
                    help="train.sparse (see above)")
    ap.add_argument("--max-train-minutes", type=float, default=20.0,
                    help="stop the training epoch after this many minutes (0: run it whole)")
    ap.add_argument("--experiment", default="scale-benchmark", help="MLflow experiment")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for both datasets, e.g. bench.requests=200")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    f = args.file.resolve()
    if not f.is_file():
        sys.exit(f"--file {f}: no such file (make one with experiments/make_synthetic.py)")
    results, facts = {}, {}
    if sys.platform.startswith("linux"):
        WATCH.start()
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        if args.baseline != "none":
            print(f"== {args.baseline} ==")
            results[args.baseline], facts[args.baseline] = run_stages([f"data={args.baseline}"], args, tmp + "/base")
        print(f"== {f} ==")
        results[f.name], facts[f.name] = run_stages(
            ["data=csv", f"data.source={f.parent.name}", f"data.train_file={f.name}", "data.time_col=timestamp",
             f"paths.data_dir={f.parent.parent}"], args, tmp + "/big")
    names = list(results)
    lines = [f"| stage (torch threads={args.threads}, batch {args.batch_size}, train.sparse={args.sparse}) | " +
             " | ".join(f"{n} s [CPU s] (peak RSS GB)" for n in names) + " |", "|---|" + "---|" * len(names)]

    def cell(sec: float, rss: float, cpu: float | None) -> str:
        return f"{sec:,.1f}" + (f" [{cpu:,.1f}]" if cpu is not None else "") + f" ({rss:.2f})"

    for st in results[names[-1]]:
        cells = [cell(*results[n][st]) if st in results[n] else "–" for n in names]
        lines.append(f"| {st} | " + " | ".join(cells) + " |")
    for key in ("users", "items", "train_rows", "optimizer_path", "epoch_fraction"):
        cells = [f"{facts[n][key]:,}" if isinstance(facts[n][key], int) else
                 f"{facts[n][key]:.1%}" if isinstance(facts[n][key], float) else str(facts[n][key]) for n in names]
        lines.append(f"| {key.replace('_', ' ')} | " + " | ".join(cells) + " |")
    if any(facts[n]["epoch_fraction"] < 1.0 for n in names):
        lines.append(f"\nTraining stopped by --max-train-minutes {args.max_train_minutes:g}: samples/s is over the "
                     "batches done, and the evaluation figures are of a partly trained model (their seconds are not).")
    if WATCH.peak:
        stage, frames = WATCH.where
        lines.append(f"\nHighest RSS sample {WATCH.peak:.2f} GB (every {WATCH.every:g} s) during {stage}, at "
                     + " > ".join(frames))
    table = "\n".join(lines)
    print("\n" + table)
    log_mlflow(args, f, results, facts, table)


def log_mlflow(args: argparse.Namespace, f: Path, results: dict, facts: dict, table: str) -> None:
    """One MLflow run: settings as params, every stage's seconds and peak RSS as metrics, the table as a file."""
    import re

    from recsys import tracking

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        uri = compose("config").tracking.uri
    with tracking.start_run(uri, args.experiment, f"scale-{f.name}") as tr:
        tr.log_params({"file": str(f), "baseline": args.baseline, "batch_size": args.batch_size,
                       "threads": args.threads, "sparse": args.sparse, "max_train_minutes": args.max_train_minutes,
                       "overrides": " ".join(args.overrides),
                       **{f"{n}.{k}": v for n in facts for k, v in facts[n].items()}})
        metrics = {}
        for n, stages in results.items():
            tag = "big" if n == f.name else "baseline"
            for st, (sec, rss, cpu) in stages.items():
                key = re.sub(r"[^a-z0-9]+", "_", st.lower()).strip("_")
                metrics[f"{tag}/{key}"] = sec
                metrics[f"{tag}/{key}_peak_rss_gb"] = rss
                if cpu is not None:
                    metrics[f"{tag}/{key}_cpu_s"] = cpu
            metrics[f"{tag}/epoch_fraction"] = facts[n]["epoch_fraction"]
        tr.log_metrics(metrics)
        tr.log_text(table + "\n", "scale_benchmark.md")
    print(f"\nlogged to MLflow: {tracking.normalise_uri(uri)} (experiment {args.experiment})")


if __name__ == "__main__":
    main()
