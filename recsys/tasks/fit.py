"""Fit a task with a Lightning Trainer built from the ``trainer`` and ``train`` configs, keeping the best epoch by
validation HR (model selection never looks at test)."""
from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import Logger


# Known, harmless warnings of Lightning 2.6 with our data path: the batch-level IterableDataset defines __len__ on
# purpose (single process, exact), and Lightning's own pytree deprecation is not ours to fix.
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


def fit(task: L.LightningModule, datamodule: L.LightningDataModule, epochs: int, trainer_cfg: Mapping[str, Any],
        logger: Logger | bool = False, callbacks: Sequence[Callback] = (), ckpt_dir: str | None = None,
        monitor: str | None = None, select_best: bool = True, patience: int | None = None) -> dict[str, float]:
    """Train ``task`` for ``epochs``; restore the weights of the best validation epoch. Returns timing figures."""
    ckpt_dir = ckpt_dir or tempfile.mkdtemp(prefix="recsys-ckpt-")
    cbs = list(callbacks)
    checkpoint = None
    if monitor and select_best:
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, monitor=monitor, mode="max", save_top_k=1,
                                     save_weights_only=True, filename="best")
        cbs.append(checkpoint)
        if patience:
            cbs.append(EarlyStopping(monitor=monitor, mode="max", patience=int(patience)))
    trainer = L.Trainer(max_epochs=epochs, logger=logger, callbacks=cbs, enable_checkpointing=checkpoint is not None,
                        default_root_dir=ckpt_dir, num_sanity_val_steps=0, **dict(trainer_cfg))
    t0 = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    seconds = time.perf_counter() - t0
    out = {"train_seconds": seconds, "epochs_run": float(trainer.current_epoch)}
    if checkpoint is not None and checkpoint.best_model_path:
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
        task.load_state_dict(state)
        out["best_val"] = float(checkpoint.best_model_score)
        out["best_epoch"] = float(_best_epoch(checkpoint))
    return out


def _best_epoch(checkpoint: ModelCheckpoint) -> int:
    state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
    return int(state.get("epoch", -1))
