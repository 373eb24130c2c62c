"""LightningDataModule of the session family: session-parallel training batches and the validation sessions."""
from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader, IterableDataset

from recsys.data.sessions import SessionData, SessionParallelBatches
from recsys.data.steps import train_loader


class _Once(IterableDataset):
    """A dataset of one element (the validation sessions, ranked in one validation step)."""

    def __init__(self, item: Any) -> None:
        self.item = item

    def __iter__(self):
        yield self.item


class SessionDataModule(L.LightningDataModule):
    """Session-parallel training batches and the validation sessions."""

    def __init__(self, data: SessionData, batch_size: int, n_sample: int, sample_alpha: float, seed: int,
                 data_fraction: float = 1.0, order: str = "id", epoch_end: str = "stop") -> None:
        super().__init__()
        self.data = data
        self.steps_per_call = 1   # optimizer steps per training_step call (recsys.data.steps)
        self.train_data = SessionParallelBatches(data.train, batch_size, data.n_items, n_sample, sample_alpha, seed,
                                                 data_fraction, data.item_counts(), order, epoch_end)

    def train_dataloader(self) -> DataLoader:
        return train_loader(self.train_data, self.steps_per_call)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Once(self.data.val), batch_size=None, collate_fn=lambda x: x)
