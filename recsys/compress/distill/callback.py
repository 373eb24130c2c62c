"""The Lightning callback that holds the frozen teacher and adds the distillation term to the task's loss."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from recsys.compress.distill import pointwise_kd_loss, rank_weights, ranking_distill_loss, softmax_kl
from recsys.models.base import sampled_loss


class TeacherCallback(Callback):
    """Provides the frozen teacher's outputs per training batch and adds the distillation term to the task's loss."""

    def __init__(self, teacher: nn.Module, family: str, loss: str, alpha: float, temperature: float,
                 topk_items: torch.Tensor | None = None, rank_lambda: float = 1.0) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.family, self.loss, self.alpha, self.temperature = family, loss, float(alpha), float(temperature)
        self.topk_items = topk_items
        self.weights = rank_weights(topk_items.shape[1], rank_lambda) if topk_items is not None else None
        self.teacher_logits: torch.Tensor | None = None
        self._state: Any = None   # session models: the teacher's own per-session state (models/base.py SessionModel)
        self._state_rows = 0
        self._term: Callable | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.teacher.to(pl_module.device)
        self._state = None
        self._term = self.term
        pl_module.extra_losses.append(self._term)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._term in pl_module.extra_losses:
            pl_module.extra_losses.remove(self._term)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._state = None

    @torch.no_grad()
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
                             ) -> None:
        self.teacher.eval()
        if self.loss == "ranking":
            self.teacher_logits = None
        elif self.family == "session":
            # session-parallel batches (inputs, targets, reset, negatives): the teacher carries its own state,
            # fresh where a new session starts, exactly like the student's task does
            inputs, _, reset = batch[:3]
            if self._state is None or self._state_rows != len(inputs):
                self._state, self._state_rows = self.teacher.init_state(len(inputs), inputs.device), len(inputs)
            h, self._state = self.teacher.advance(inputs, self.teacher.reset_state(self._state, reset))
            self.teacher_logits = self.teacher.item_scores(h)
        else:  # ranking / ctr batches are (users-or-fields, items-or-fields, labels, ...)
            self.teacher_logits = self.teacher(*batch[:2])

    def term(self, task: L.LightningModule, batch: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        """Extra loss such that task loss + term = the distillation objective (the task already adds its own loss).

        ``out`` is what the task passes: logits for ranking / ctr, output states h for session models.
        """
        if self.family == "session":
            inputs, targets, _, negatives = batch[:4]
            base = sampled_loss(task.model, out, targets, negatives, task.loss_name, task.bpreg, task.logq,
                                task.log_pop)
            logits = task.model.item_scores(out)
            total = (1 - self.alpha) * base + self.alpha * softmax_kl(logits, self.teacher_logits, self.temperature)
            return total - base
        target = batch[2]
        base = task.loss_fn(out, target)
        if self.loss == "ranking":
            users = batch[0][target > 0.5].unique()
            items = self.topk_items.to(users.device)[users]
            s = task.model(users[:, None].expand_as(items).reshape(-1), items.reshape(-1)).view(items.shape)
            total = (1 - self.alpha) * base + self.alpha * ranking_distill_loss(s, self.weights.to(s.device))
        else:
            total = pointwise_kd_loss(out, self.teacher_logits, target.float(), self.alpha, self.temperature)
        return total - base
