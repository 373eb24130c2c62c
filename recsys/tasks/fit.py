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

from recsys.tasks.progress import EpochLines, resolve_progress_bar

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
    kwargs = dict(trainer_cfg)
    # the per-step bar on a terminal only; elsewhere (log files, multirun jobs, CI) one line per epoch
    kwargs["enable_progress_bar"] = resolve_progress_bar(kwargs.get("enable_progress_bar", "auto"))
    if not kwargs["enable_progress_bar"]:
        cbs.append(EpochLines())
    trainer = L.Trainer(max_epochs=epochs, logger=logger, callbacks=cbs, enable_checkpointing=checkpoint is not None,
                        default_root_dir=ckpt_dir, num_sanity_val_steps=0, **kwargs)
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


class StageTrainer:
    """Trains and evaluates models of one job (family, data, config, logger): what the pipeline's stages and the
    compression techniques use to run a training stage, instead of calling back into the pipeline."""

    def __init__(self, family: Any, data: Any, cfg: Any, logger: Logger | bool = False) -> None:
        self.family, self.data, self.cfg, self.logger = family, data, cfg, logger

    def train(self, model: torch.nn.Module, stage: str, lr: float | None = None, optimizer: str | None = None,
              epochs: int | None = None, data_fraction: float = 1.0, callbacks: Sequence[Callback] = (),
              select_best: bool = True, task: L.LightningModule | None = None) -> dict[str, float]:
        """Train ``model`` in place with its family's task; by default keeps the best validation epoch."""
        import shutil
        from pathlib import Path

        from omegaconf import OmegaConf

        family, data, cfg = self.family, self.data, self.cfg
        task = task or family.make_task(model, cfg, stage, lr or cfg.train.lr, optimizer or cfg.train.optimizer)
        dm = family.make_datamodule(data, cfg, data_fraction=data_fraction)
        Path(cfg.paths.cache_dir).mkdir(parents=True, exist_ok=True)
        from recsys.lifecycle import ckpt_prefix
        from recsys.tasks.guard import DivergenceGuard

        ckpt = tempfile.mkdtemp(prefix=ckpt_prefix(stage), dir=str(Path(cfg.paths.cache_dir).resolve()))
        guard = DivergenceGuard(stage, cfg.train.get("divergence_factor", 10.0))
        try:
            info = fit(task, dm, epochs or cfg.train.epochs, OmegaConf.to_container(cfg.trainer, resolve=True),
                       logger=self.logger, callbacks=[guard, *callbacks], ckpt_dir=ckpt,
                       monitor=f"{stage}/epoch_{family.monitor}", select_best=select_best,
                       patience=cfg.train.get("patience") if select_best else None)
        finally:
            shutil.rmtree(ckpt, ignore_errors=True)  # the best weights are back in the model; the file is not needed
        n = family.samples_per_epoch(data, cfg, data_fraction) * info["epochs_run"]
        info["samples_per_s"] = n / max(info["train_seconds"], 1e-9)
        info["seconds_per_epoch"] = info["train_seconds"] / max(info["epochs_run"], 1.0)
        return info

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """The family's quality figures of ``model`` on this job's data."""
        return self.family.evaluate(model, self.data, self.cfg)
