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


class EpochsRun(Callback):
    """Keeps the number of epochs run in ``callback_metrics``, which Lightning hands back from spawned DDP ranks."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.callback_metrics["recsys/epochs_run"] = torch.tensor(float(trainer.current_epoch + 1))


def strategy_of(trainer_cfg: dict[str, Any]) -> Any:
    """``trainer.strategy=ddp`` -> DDP whose extra ranks Lightning *spawns* inside ``fit`` (start_method="spawn").

    Why not Lightning's default for ``ddp`` (the subprocess launcher re-running ``run.py`` with the same argv): each
    rank would then run the whole Hydra job (read data, open an MLflow run, train or load the dense cache, evaluate,
    export, log), and every stage would need a rank guard. Spawned ranks run only the training loop; Lightning returns
    rank 0's weights, best checkpoint path and callback metrics to the job's process, which does everything else once
    (one MLflow run, one cache writer). Under an external launcher (torchrun, SLURM: ``LOCAL_RANK`` set) plain ``ddp``
    is kept."""
    import os

    strategy = trainer_cfg.pop("strategy", "auto") or "auto"
    if strategy == "ddp" and "LOCAL_RANK" not in os.environ:
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(start_method="spawn")
    return strategy


def fit(task: L.LightningModule, datamodule: L.LightningDataModule, epochs: int, trainer_cfg: Mapping[str, Any],
        logger: Logger | bool = False, callbacks: Sequence[Callback] = (), ckpt_dir: str | None = None,
        monitor: str | None = None, select_best: bool = True, patience: int | None = None) -> dict[str, float]:
    """Train ``task`` for ``epochs``; restore the weights of the best validation epoch. Returns timing figures."""
    ckpt_dir = ckpt_dir or tempfile.mkdtemp(prefix="recsys-ckpt-")
    cbs = list(callbacks)
    checkpoint = None
    if monitor and select_best:
        checkpoint = ScoreCheckpoint(dirpath=ckpt_dir, monitor=monitor, mode="max", save_top_k=1,
                                     save_weights_only=True, filename="best")
        cbs.append(checkpoint)
        if patience:
            cbs.append(EarlyStopping(monitor=monitor, mode="max", patience=int(patience)))
    kwargs = dict(trainer_cfg)
    strategy = strategy_of(kwargs)
    cbs.append(EpochsRun())
    # the per-step bar on a terminal only; elsewhere (log files, multirun jobs, CI) one line per epoch
    kwargs["enable_progress_bar"] = resolve_progress_bar(kwargs.get("enable_progress_bar", "auto"))
    if not kwargs["enable_progress_bar"]:
        cbs.append(EpochLines())
    trainer = L.Trainer(max_epochs=epochs, logger=logger, callbacks=cbs, enable_checkpointing=checkpoint is not None,
                        default_root_dir=ckpt_dir, num_sanity_val_steps=0, strategy=strategy, **kwargs)
    t0 = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    seconds = time.perf_counter() - t0
    run = trainer.callback_metrics.get("recsys/epochs_run")
    out = {"train_seconds": seconds, "epochs_run": float(run) if run is not None else float(trainer.current_epoch)}
    if checkpoint is not None and checkpoint.best_model_path:
        # weights_only=True: the checkpoint (save_weights_only) holds tensors and plain values; nothing is unpickled
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
        task.load_state_dict(state["state_dict"])
        score = checkpoint.best_model_score  # not handed back from spawned ranks: then the score kept in the file
        out["best_val"] = float(score) if score is not None else float(state["recsys_best_val"])
        out["best_epoch"] = float(int(state.get("epoch", -1)))
    return out


class ScoreCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that also writes the monitored score into the file (read back after spawned DDP ranks)."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        score = trainer.callback_metrics.get(self.monitor)
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero and score is not None:
            state = torch.load(filepath, map_location="cpu", weights_only=True)
            state["recsys_best_val"] = float(score)
            from recsys.fileio import atomic_path

            with atomic_path(filepath) as tmp:
                torch.save(state, tmp)


AUTO_STEPS_PER_CALL = 32


STEP_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
              "on_before_optimizer_step", "on_before_zero_grad")


def overrides(obj: Any, base: type, hooks: Sequence[str]) -> bool:
    """Whether ``obj`` (an instance or a class) overrides one of ``base``'s ``hooks``."""
    cls = obj if isinstance(obj, type) else type(obj)
    return any(getattr(cls, h) is not getattr(base, h) for h in hooks)


def watches_steps(callback: Callback | type) -> bool:
    """Whether a callback hooks single training steps (overrides a per-batch hook), e.g. pruning re-applying its
    masks or distillation reading each batch; callbacks of epoch boundaries only do not."""
    return overrides(callback, Callback, STEP_HOOKS)


def steps_per_call(setting: Any, trainer_cfg: Mapping[str, Any], callbacks: Sequence[Callback]) -> int:
    """``train.steps_per_call``: an integer as given; ``auto``: :data:`AUTO_STEPS_PER_CALL` mini-batches per
    ``training_step`` call unless something counts or watches single steps: a callback with a per-batch hook
    (:func:`watches_steps`), DDP or several devices, or a trainer limit counted in batches (``limit_train_batches``,
    ``val_check_interval``, ``max_steps``)."""
    if str(setting).lower() != "auto":
        return int(setting)
    t = dict(trainer_cfg)
    several = str(t.get("strategy", "auto")).startswith("ddp") or str(t.get("devices", 1)) not in ("1", "auto")
    counted = t.get("max_steps") not in (None, -1) or any(    # an int counts batches (a float is a fraction)
        isinstance(t.get(k), int) and not isinstance(t.get(k), bool) for k in ("limit_train_batches", "val_check_interval"))
    return 1 if several or counted or any(watches_steps(cb) for cb in callbacks) else AUTO_STEPS_PER_CALL


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
        dm.steps_per_call = steps_per_call(cfg.train.get("steps_per_call", "auto"), cfg.trainer, callbacks)
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
