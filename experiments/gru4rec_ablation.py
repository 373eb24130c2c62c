"""GRU4Rec parity ablation (issue 12): train one configuration of a preset (``conf/experiment/gru4rec_xe_*.yaml``) with
Hydra overrides, print one JSON line: test recall@20 / MRR@20 and training events/s.

Same components as ``run.py`` (family data, model spec, task, DataModule, evaluation) without export, latency and
MLflow, so a screening row costs only its training and one test evaluation. Rows of the README's ablation table:
    python experiments/gru4rec_ablation.py --preset gru4rec_xe_480 --epochs 10 model.logq_form=pop
Speed figures are only meaningful on a quiet machine (run alone; ``--threads`` torch threads).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recsys.models import build_model  # noqa: E402
from recsys.tasks.session import FAMILY  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gru4rec_xe_480", help="conf/experiment name")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit-batches", type=int, default=0,
                    help="train only the first N session-parallel mini-batches of each epoch (a smoke check that the "
                         "preset trains; 0: whole epochs). The test set is always evaluated in full.")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.logq_form=pop")
    args = ap.parse_args(argv)
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(str(conf), version_base=None):
        cfg = compose("config", overrides=[f"experiment={args.preset}", f"train.epochs={args.epochs}",
                                           *args.overrides])
    errs = FAMILY.check(OmegaConf.to_container(cfg, resolve=True))
    if errs:
        raise SystemExit("; ".join(errs))
    torch.set_num_threads(args.threads)
    data = FAMILY.load_data(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(FAMILY.model_spec(OmegaConf.to_container(cfg.model, resolve=True), data))
    task = FAMILY.make_task(model, cfg, "dense", float(cfg.train.lr), str(cfg.train.optimizer))
    dm = FAMILY.make_datamodule(data, cfg)
    limit = args.limit_batches if args.limit_batches > 0 else 1.0
    trainer = L.Trainer(max_epochs=args.epochs, limit_train_batches=limit, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, accelerator="cpu")
    t0 = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    seconds = time.perf_counter() - t0
    events = FAMILY.samples_per_epoch(data, cfg) * args.epochs if args.limit_batches <= 0 else None
    ranks_metrics = FAMILY.evaluate(model.eval(), data, cfg)
    row = {"preset": args.preset, "epochs": args.epochs, "limit_batches": args.limit_batches,
           "overrides": args.overrides,
           "recall_at_20": round(ranks_metrics["recall_at_20"], 4), "mrr_at_20": round(ranks_metrics["mrr_at_20"], 4),
           "train_seconds": round(seconds, 1), "events_per_s": round(events / seconds, 1) if events else None}
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
