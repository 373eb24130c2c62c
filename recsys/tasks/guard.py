"""Divergence guard: stop a training stage whose loss is not finite, or whose epoch loss is far above where the stage
started, so a diverged model is never evaluated as a result nor cached as the dense model of its config."""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from recsys.errors import TrainingDiverged


LOSS_FLOOR = 0.1   # a stage that starts almost perfect (loss ~0) is not called diverged for noise above that start


def _losses_of(outputs: Any) -> list[float]:
    """The batch's step losses: one, or one per step of a ``train.steps_per_call`` chunk (a 1-D tensor)."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    return loss.detach().reshape(-1).tolist() if isinstance(loss, torch.Tensor) else []


class DivergenceGuard(Callback):
    """Raise ``TrainingDiverged`` (epoch and step named) on a non-finite batch loss, or when an epoch's mean loss exceeds
    ``factor`` x the stage's first batch loss (at least ``LOSS_FLOOR``) (``train.divergence_factor``; null disables the factor test)."""

    def __init__(self, stage: str, factor: float | None = 10.0) -> None:
        self.stage, self.factor = stage, (float(factor) if factor is not None else None)
        self.first: float | None = None
        self._sum, self._n = 0.0, 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sum, self._n = 0.0, 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        losses = _losses_of(outputs)
        for loss in losses:
            if not math.isfinite(loss):
                raise TrainingDiverged(f"{self.stage} training diverged: loss={loss} at epoch {trainer.current_epoch} "
                                       f"(batch {batch_idx}, global step {trainer.global_step}); lower the learning "
                                       "rate")
        if losses and self.first is None:
            self.first = losses[0]
        self._sum, self._n = self._sum + sum(losses), self._n + len(losses)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._n or self.factor is None or self.first is None:
            return
        mean = self._sum / self._n
        if mean > self.factor * max(self.first, LOSS_FLOOR):
            raise TrainingDiverged(
                f"{self.stage} training diverged: epoch {trainer.current_epoch} mean loss {mean:.4g} is above "
                f"train.divergence_factor={self.factor:g} x the first batch loss {self.first:.4g} "
                f"(global step {trainer.global_step}); lower the learning rate")
