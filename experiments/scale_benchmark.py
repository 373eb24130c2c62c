"""Scale benchmark (issue 13): NeuMF f=32 [128,64,32] end to end on an interaction file (e.g. the ML-20M-shaped one
from ``experiments/make_synthetic.py``) through the generic reader (``data=csv``), the same path ``data=ml-20m`` uses.

Prints, per stage, seconds and the process's peak RSS so far: read + split, training negatives of one epoch, one
training epoch (training only, with its samples/s), sampled evaluation (test + validation), full-ranking evaluation
(every test user over every item, known items masked, blocked over users: never the full score matrix), export
(dense artifact written and reloaded) and latency. ``--baseline ml-1m-loo`` runs the same stages on ML-1M first, so the
two columns come from one process and one machine state.

    python experiments/make_synthetic.py --out /tmp/syn/ml20m/interactions.tsv             # ~1 min alone
    RECSYS_DATA_DIR=../shared/datasets python experiments/scale_benchmark.py --file /tmp/syn/ml20m/interactions.tsv
    # a reduced check: make_synthetic.py --users 20000 --items 8000 --rows 2000000 --out /tmp/syn/s2m/interactions.tsv
    # then --file /tmp/syn/s2m/interactions.tsv --baseline none

Targets (2 cores, alone): peak RSS <= 6 GB, read + split <= 60 s, samples/s within 20 % of ML-1M, full ranking
<= 10 min. Timings are only meaningful on a quiet machine.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from recsys.export.artifact import load_artifact, save_artifact  # noqa: E402
from recsys.models import build_model  # noqa: E402
from recsys.tasks.base import get_family  # noqa: E402
from recsys.tasks.fit import StageTrainer  # noqa: E402

MODEL = ["model=neumf", "model.factors=32", "model.mlp_layers=[128,64,32]"]


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def run_stages(data_overrides: list[str], batch_size: int, cache_dir: str) -> dict[str, tuple[float, float]]:
    """{stage: (seconds, peak RSS GB after it)} for one dataset."""
    import lightning as L

    sys.path.insert(0, str(ROOT / "experiments"))
    from ncf_benchmark import EpochClock

    overrides = [*data_overrides, *MODEL, "train.epochs=1", f"train.batch_size={batch_size}", "train.use_cache=false",
                 "trainer.enable_progress_bar=false", "eval.full_ranking=true", f"paths.cache_dir={cache_dir}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=overrides)
    family = get_family(cfg.model.task)
    out: dict[str, tuple[float, float]] = {}

    def stage(name, fn):
        t0 = time.perf_counter()
        r = fn()
        out[name] = (time.perf_counter() - t0, peak_rss_gb())
        print(f"  {name:28s} {out[name][0]:9.1f} s   peak RSS {out[name][1]:6.2f} GB", flush=True)
        return r

    data = stage("read + split", lambda: family.load_data(cfg))
    dm = family.make_datamodule(data, cfg)
    stage("negatives (1 epoch)", lambda: dm.train_data.epoch_tensors(0))
    L.seed_everything(cfg.seed, workers=True)
    model = build_model(family.model_spec(OmegaConf.to_container(cfg.model, resolve=True), data))
    clock = EpochClock()
    stage("one epoch (fit + val)", lambda: StageTrainer(family, data, cfg).train(model, "dense", callbacks=[clock],
                                                                                  select_best=False))
    n = family.samples_per_epoch(data, cfg)
    out["training samples/s"] = (n / clock.seconds[0], peak_rss_gb())
    print(f"  {'training samples/s':28s} {out['training samples/s'][0]:9,.0f}   (training only, "
          f"{clock.seconds[0]:.1f} s)", flush=True)
    q = stage("evaluation (all)", lambda: family.evaluate(model, data, cfg))
    out["sampled eval (test)"] = (q["eval_seconds"], peak_rss_gb())
    out["full-ranking eval"] = (q["full_eval_seconds"], peak_rss_gb())
    print(f"  of which sampled test {q['eval_seconds']:.1f} s, full ranking {q['full_eval_seconds']:.1f} s; "
          f"HR@10 {q['hr_at_10']:.4f}, recall@10 {q['recall_at_10']:.4f}", flush=True)
    path = Path(cache_dir) / "model.pt"
    stage("export (save + reload)", lambda: (save_artifact(model, path), load_artifact(path)))
    stage("latency", lambda: family.latency(model, data, cfg))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", type=Path, required=True, help="TSV with header user item timestamp")
    ap.add_argument("--baseline", default="ml-1m-loo", help="data preset run first for comparison, or 'none'")
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    f = args.file.resolve()
    if not f.is_file():
        sys.exit(f"--file {f}: no such file (make one with experiments/make_synthetic.py)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        if args.baseline != "none":
            print(f"== {args.baseline} ==")
            results[args.baseline] = run_stages([f"data={args.baseline}"], args.batch_size, tmp + "/base")
        print(f"== {f} ==")
        results[f.name] = run_stages(["data=csv", f"data.source={f.parent.name}", f"data.train_file={f.name}",
                                      "data.time_col=timestamp", f"paths.data_dir={f.parent.parent}"],
                                     args.batch_size, tmp + "/big")
    names = list(results)
    print(f"\n| stage (torch threads={args.threads}, batch {args.batch_size}) | " +
          " | ".join(f"{n} s (peak RSS GB)" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for st in results[names[-1]]:
        cells = [f"{results[n][st][0]:,.1f} ({results[n][st][1]:.2f})" if st in results[n] else "–" for n in names]
        print(f"| {st} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
