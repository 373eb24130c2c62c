"""Implicit-feedback ranking task (NCF protocol): pointwise BCE on positives + sampled negatives, validation by HR/NDCG
of the held-out item among its sampled negatives. Wraps any model with ``forward(users, items) -> logits``."""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from recsys.evaluation import metrics as M

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
              "adagrad": torch.optim.Adagrad}


class RankingTask(L.LightningModule):
    """Trains a ranking model; logs ``<stage>/train_loss`` and ``<stage>/val_hr_at_k`` / ``val_ndcg_at_k`` per epoch."""

    def __init__(self, model: nn.Module, lr: float = 1e-3, optimizer: str = "adam", weight_decay: float = 0.0,
                 stage: str = "dense", topk: int = 10) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer={optimizer!r} is not one of {sorted(OPTIMIZERS)}")
        self.model = model
        self.lr, self.optimizer_name, self.weight_decay = lr, optimizer, weight_decay
        self.stage, self.topk = stage, topk
        self.loss_fn = nn.BCEWithLogitsLoss()
        self._val_ranks: list[torch.Tensor] = []
        # Extra loss terms (distillation, regularisers) are added by callbacks through this hook list: a callback cannot
        # change the loss itself, so the task asks each registered term for its contribution.
        self.extra_losses: list[Any] = []

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.model(users, items)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        users, items, labels = batch[:3]
        logits = self.model(users, items)
        loss = self.loss_fn(logits, labels)
        for term in self.extra_losses:
            loss = loss + term(self, batch, logits)
        self.log(f"{self.stage}/train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(users))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        users, candidates = batch
        scores = self.model.score(users[:, None].expand_as(candidates).reshape(-1), candidates.reshape(-1))
        scores = scores.view(candidates.shape)
        self._val_ranks.append(M.rank_of_target(scores, scores[:, 0]))

    def on_validation_epoch_end(self) -> None:
        if not self._val_ranks:
            return
        ranks = torch.cat(self._val_ranks)
        self._val_ranks.clear()
        k = self.topk
        self.log(f"{self.stage}/val_hr_at_{k}", M.hit_rate_at_k(ranks, k), prog_bar=True)
        self.log(f"{self.stage}/val_ndcg_at_{k}", M.ndcg_at_k(ranks, k), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return OPTIMIZERS[self.optimizer_name](params, lr=self.lr, weight_decay=self.weight_decay)
