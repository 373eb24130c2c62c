"""LightningDataModules of the CTR family: shuffled rows of a CTR table (Criteo format), and NCF's ranking pairs
carrying the CTR data (MovieLens with side features)."""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from recsys.data.ctr import CTRTable
from recsys.data.datamodule import RankingDataModule
from recsys.data.shard import rank_batch, rank_world, shard
from recsys.data.steps import train_loader
from recsys.errors import ConfigError


class TableBatches(IterableDataset):
    """Shuffled (seed, epoch) batches ``(cat, dense, labels)`` of table rows; one ``__iter__`` per epoch."""

    def __init__(self, table: CTRTable, rows: np.ndarray, batch_size: int, seed: int = 0, shuffle: bool = True,
                 data_fraction: float = 1.0) -> None:
        self.cat, self.dense = torch.from_numpy(table.cat), torch.from_numpy(table.dense)
        self.labels = torch.from_numpy(table.labels)
        self.rows, self.batch_size, self.seed, self.shuffle = rows, int(batch_size), int(seed), shuffle
        self.data_fraction, self.epoch = float(data_fraction), 0

    def n_rows(self) -> int:
        return max(1, int(round(self.data_fraction * len(self.rows))))

    def __len__(self) -> int:
        world = rank_world()[1] if self.shuffle else 1
        return math.ceil((self.n_rows() // world) / rank_batch(self.batch_size, world))

    def epoch_rows(self, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """Rows of one training epoch (rank ``rank``'s shard of it under DDP); evaluation (no shuffle): all, in order."""
        rows = self.rows
        if self.shuffle:
            rows = np.random.default_rng([self.seed, epoch]).permutation(rows)[:self.n_rows()]
            if world > 1:
                rows = rows[shard(len(rows), rank, world)]
        return rows

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        rank, world = rank_world() if self.shuffle else (0, 1)
        idx = torch.from_numpy(np.asarray(self.epoch_rows(epoch, rank, world), dtype=np.int64))
        bs = rank_batch(self.batch_size, world)
        for s in range(0, len(idx), bs):
            r = idx[s:s + bs]
            yield self.cat[r], self.dense[r], self.labels[r]


class PairsDataModule(RankingDataModule):
    """NCF's ranking DataModule, carrying the CTR data so the task can fill a fresh model's side-feature tables."""

    def __init__(self, ctr_data: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ctr_data = ctr_data


class TableDataModule(L.LightningDataModule):
    """Shuffled training rows and the validation rows of a CTR table."""

    def __init__(self, table: CTRTable, batch_size: int, seed: int, data_fraction: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < data_fraction <= 1.0:
            raise ConfigError(f"data_fraction must be in (0, 1], got {data_fraction} (finetune.data_fraction).")
        self.steps_per_call = 1   # optimizer steps per training_step call (recsys.data.steps)
        self.train_data = TableBatches(table, table.train_idx, batch_size, seed, True, data_fraction)
        self.val_data = TableBatches(table, table.val_idx, 8192, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return train_loader(self.train_data, self.steps_per_call)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_data, batch_size=None)
