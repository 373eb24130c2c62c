"""One side of one pair of ``experiments/peers.py``, run as a subprocess under the python that side needs.

    <python> experiments/peers_workers.py <kind> --spec SPEC.json --out RESULT.json

Kinds: ``recbole-neumf`` / ``recbole-deepfm`` (a python with RecBole 1.2.1), ``gru4rec-official`` (a python that can
import the official GRU4Rec checkout), ``project`` (the project's venv). Only the standard library is imported at the
top, so the file runs under any of them. Every worker pins torch's threads to ``spec["threads"]`` before the first
torch op, times training only (validation and test excluded) and writes one JSON object: seconds per epoch, samples or
events per second, the quality metrics, the thread count torch reported and the library versions.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def pin_threads(n: int) -> Any:
    """torch with ``n`` intra-op threads (and 1 inter-op thread); the env variables are set by the parent already."""
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set by an earlier parallel region; harmless for these workloads
        pass
    return torch


def sampled_metrics(pos: Any, neg: Any, k: int = 10) -> dict[str, float]:
    """HR@k / NDCG@k of the positive among its negatives, ties counted against it (the project's conservative rank)."""
    import numpy as np

    rank = 1 + (np.asarray(neg) >= np.asarray(pos)[:, None]).sum(axis=1)
    hit = rank <= k
    return {"hr_at_10": float(hit.mean()), "ndcg_at_10": float((hit / np.log2(rank + 1)).mean())}


def label_metrics(scores: Any, labels: Any) -> dict[str, float]:
    """Pooled AUC (ties count one half) and logloss of probabilities ``scores`` against 0/1 ``labels``."""
    import numpy as np

    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    auc = (ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    p = np.clip(s, 1e-7, 1 - 1e-7)
    return {"auc": float(auc), "logloss": float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())}


# ------------------------------------------------------------------------------------------------------------ RecBole
def _recbole_run(spec: dict[str, Any], model_name: str, extra: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """Train a RecBole model on the exported atomic files; returns (model with best-valid weights, dataset, timing)."""
    torch = pin_threads(int(spec["threads"]))
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import get_model, init_seed

    ckpt = tempfile.mkdtemp(prefix="peers-recbole-")
    cfg = {"data_path": spec["data_path"], "dataset": spec["dataset"], "benchmark_filename": ["train", "valid", "test"],
           "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "use_gpu": False, "device": "cpu",
           "epochs": int(spec["epochs"]), "train_batch_size": int(spec["batch_size"]), "eval_batch_size": 65536,
           "learning_rate": float(spec["lr"]), "learner": "adam", "seed": int(spec.get("seed", 2020)),
           "reproducibility": True, "show_progress": False, "checkpoint_dir": ckpt, "save_dataset": False,
           "save_dataloaders": False, "stopping_step": 10 ** 6, "worker": 0, "log_wandb": False,
           "train_neg_sample_args": {"distribution": "uniform", "sample_num": int(spec["num_negatives"]),
                                     "alpha": 1.0, "dynamic": False, "candidate_num": 0},
           "eval_args": {"group_by": "user", "order": "RO", "mode": {"valid": "uni100", "test": "uni100"}},
           "metrics": ["Hit", "NDCG"], "topk": [10], "valid_metric": "NDCG@10", **extra}
    config = Config(model=model_name, dataset=spec["dataset"], config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, _ = data_preparation(config, dataset)
    model = get_model(model_name)(config, train.dataset).to("cpu")
    trainer = Trainer(config, model)
    epoch_seconds: list[float] = []
    inner: Callable = trainer._train_epoch

    def timed(*a: Any, **kw: Any) -> Any:  # wraps the training part of each epoch; validation runs outside it
        t0 = time.perf_counter()
        out = inner(*a, **kw)
        epoch_seconds.append(time.perf_counter() - t0)
        return out

    trainer._train_epoch = timed
    trainer.fit(train, valid, saved=True, show_progress=False)
    state = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)  # RecBole's own checkpoint
    model.load_state_dict(state["state_dict"])
    model.eval()
    n_train = len(train.dataset) * (1 + int(spec["num_negatives"]))
    info = {"epoch_seconds": epoch_seconds, "samples_per_epoch": n_train, "threads": torch.get_num_threads(),
            "fields": sorted(dataset.field2type), "train_rows": len(train.dataset),
            "versions": {"recbole": recbole.__version__, "torch": torch.__version__}}
    return model, dataset, info


def _recbole_scores(model: Any, dataset: Any, users: list[str], items: list[str], join: bool) -> Any:
    """RecBole's ``predict`` for (user token, item token) pairs, in chunks; ``join`` adds the user/item features."""
    import numpy as np
    import torch
    from recbole.data.interaction import Interaction

    u = dataset.token2id("user_id", users)
    i = dataset.token2id("item_id", items)
    out = []
    with torch.no_grad():
        for s in range(0, len(u), 65536):
            inter = Interaction({"user_id": torch.as_tensor(u[s:s + 65536]), "item_id": torch.as_tensor(i[s:s + 65536])})
            if join:
                inter = dataset.join(inter)
            out.append(model.predict(inter).float().numpy())
    return np.concatenate(out)


def _candidates(path: str) -> tuple[list[str], list[list[str]]]:
    """Users and their candidate lists (positive first) from the exported ``candidates.tsv``."""
    users, cands = [], []
    with open(path) as f:
        next(f)
        for line in f:
            u, rest = line.rstrip("\n").split("\t", 1)
            users.append(u)
            cands.append(rest.split(" "))
    return users, cands


def recbole_neumf(spec: dict[str, Any]) -> dict[str, Any]:
    """RecBole NeuMF; quality = HR/NDCG@10 on the project's own test candidates scored by RecBole's ``predict``."""
    extra = {"mf_embedding_size": int(spec["factors"]), "mlp_embedding_size": int(spec["mlp_layers"][0]) // 2,
             "mlp_hidden_size": list(spec["mlp_layers"][1:]), "dropout_prob": 0.0, "mf_train": True,
             "mlp_train": True, "use_pretrain": False, "load_col": {"inter": ["user_id", "item_id"]}}
    model, dataset, info = _recbole_run(spec, "NeuMF", extra)
    users, cands = _candidates(spec["candidates"])
    width = len(cands[0])
    flat_u = [u for u in users for _ in range(width)]
    flat_i = [i for c in cands for i in c]
    s = _recbole_scores(model, dataset, flat_u, flat_i, join=False).reshape(len(users), width)
    return {**info, "quality": sampled_metrics(s[:, 0], s[:, 1:]), "n_eval_users": len(users)}


def recbole_deepfm(spec: dict[str, Any]) -> dict[str, Any]:
    """RecBole DeepFM; quality = AUC / logloss pooled over the project's test candidates (positive vs 99 negatives), and
    HR/NDCG@10 on them, as the project's CTR family reports."""
    import numpy as np

    extra = {"embedding_size": int(spec["embed_dim"]), "mlp_hidden_size": list(spec["mlp_layers"]),
             "dropout_prob": 0.0, "load_col": {"inter": ["user_id", "item_id"], "user": ["user_id", *spec["user_fields"]],
                                               "item": ["item_id", *spec["item_fields"]]}}
    model, dataset, info = _recbole_run(spec, "DeepFM", extra)
    users, cands = _candidates(spec["candidates"])
    width = len(cands[0])
    s = _recbole_scores(model, dataset, [u for u in users for _ in range(width)], [i for c in cands for i in c],
                        join=True)
    labels = np.tile(np.r_[1.0, np.zeros(width - 1)], len(users))
    grid = s.reshape(len(users), width)
    quality = {**label_metrics(s, labels), **sampled_metrics(grid[:, 0], grid[:, 1:])}
    return {**info, "quality": quality, "n_eval_users": len(users)}


# ---------------------------------------------------------------------------------------------------- official GRU4Rec
EPOCH_LINE = re.compile(r"^Epoch(\d+) --> loss: [-\d.naninf]+ \t\(([\d.]+)s\) \t\[[\d.]+ mb/s \| (\d+) e/s\]")
RESULT_LINE = re.compile(r"^Recall@(\d+): ([\d.]+) MRR@\d+: ([\d.]+)")


def parse_gru4rec_log(text: str) -> dict[str, Any]:
    """Per-epoch training seconds and events/s, and the test recall/MRR, from the official run.py's printed log."""
    secs, events = [], []
    quality: dict[str, float] = {}
    for line in text.splitlines():
        m = EPOCH_LINE.match(line)
        if m:
            secs.append(float(m.group(2)))
            events.append(float(m.group(3)) * float(m.group(2)))  # e/s x s = events of that epoch
        r = RESULT_LINE.match(line)
        if r:
            quality[f"recall_at_{r.group(1)}"] = float(r.group(2))
            quality[f"mrr_at_{r.group(1)}"] = float(r.group(3))
    if not secs or not quality:
        raise RuntimeError("official GRU4Rec log has no epoch lines or no Recall@ line; its tail:\n" + text[-2000:])
    return {"epoch_seconds": secs, "samples_per_epoch": sum(events) / len(events), "quality": quality}


def gru4rec_official(spec: dict[str, Any]) -> dict[str, Any]:
    """Official run.py in this process (threads pinned first): train on train_full with the param file, test conservative."""
    torch = pin_threads(int(spec["threads"]))
    import contextlib
    import io

    checkout = Path(spec["checkout"]).resolve()
    sys.path.insert(0, str(checkout))
    argv = [str(checkout / "run.py"), spec["train"], "-pf", spec["param_file"], "-t", spec["test"], "-m", "20",
            "-e", "conservative", "-d", "cpu"]
    buf = io.StringIO()
    old_argv, sys.argv = sys.argv, argv
    try:
        with contextlib.redirect_stdout(buf):
            runpy.run_path(str(checkout / "run.py"), run_name="__main__")
    finally:
        sys.argv = old_argv
        sys.stdout.write(buf.getvalue())
    out = parse_gru4rec_log(buf.getvalue())
    return {**out, "threads": torch.get_num_threads(), "versions": {"torch": torch.__version__, "gru4rec": "official"}}


# ------------------------------------------------------------------------------------------------------------- project
def project(spec: dict[str, Any]) -> dict[str, Any]:
    """The project's training stage for the given Hydra overrides, timed per epoch without validation; test metrics."""
    torch = pin_threads(int(spec["threads"]))
    sys.path.insert(0, str(ROOT))
    import lightning as L
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import recsys
    from recsys.models import build_model
    from recsys.tasks.base import get_family
    from recsys.tasks.fit import StageTrainer

    class TrainOnlyTimer(L.Callback):
        """Seconds of each training epoch minus the validation run inside it."""

        def __init__(self) -> None:
            self.epochs: list[float] = []
            self._t0 = self._v0 = 0.0
            self._val = 0.0

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self._t0, self._val = time.perf_counter(), 0.0

        def on_validation_start(self, trainer: Any, module: Any) -> None:
            self._v0 = time.perf_counter()

        def on_validation_end(self, trainer: Any, module: Any) -> None:
            self._val += time.perf_counter() - self._v0

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            self.epochs.append(time.perf_counter() - self._t0 - self._val)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=list(spec["overrides"]))
    family = get_family(cfg.model.task)
    data = family.load_data(cfg)
    L.seed_everything(int(cfg.seed), workers=True)
    model = build_model(family.model_spec(OmegaConf.to_container(cfg.model, resolve=True), data))
    timer = TrainOnlyTimer()
    StageTrainer(family, data, cfg, logger=False).train(model, "dense", callbacks=[timer])
    quality = {k: float(v) for k, v in family.evaluate(model, data, cfg).items()   # test-set quality only
               if not k.startswith(("val_", "eval_", "full_")) and "seconds" not in k and "per_s" not in k}
    import lightning

    return {"epoch_seconds": timer.epochs, "samples_per_epoch": float(family.samples_per_epoch(data, cfg)),
            "quality": quality, "threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__, "lightning": lightning.__version__,
                         "recsys": getattr(recsys, "__version__", "worktree")}}


WORKERS = {"recbole-neumf": recbole_neumf, "recbole-deepfm": recbole_deepfm, "gru4rec-official": gru4rec_official,
           "project": project}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=sorted(WORKERS))
    ap.add_argument("--spec", required=True, help="JSON file written by peers.py")
    ap.add_argument("--out", required=True, help="where to write the result JSON")
    args = ap.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    result = WORKERS[args.kind](spec)
    result["env_threads"] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
