"""LightningDataModule for implicit ranking (NCF protocol): pointwise training batches, sampled-candidate evaluation."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from recsys.data.sampling import TrainPositives, training_epoch
from recsys.data.shard import rank_batch, rank_world, shard
from recsys.data.splits import ImplicitSplit
from recsys.data.steps import train_loader
from recsys.errors import ConfigError


class TrainEpochs(IterableDataset):
    """Each ``__iter__`` is one epoch: fresh negatives, a shuffle seeded by (seed, epoch), contiguous batches.

    Yields ``(users LongTensor[b], items LongTensor[b], labels FloatTensor[b])``. Use with ``num_workers=0``: the
    epoch counter lives in this object (or call :meth:`set_epoch`).
    """

    def __init__(self, split: ImplicitSplit, batch_size: int, num_negatives: int, seed: int,
                 data_fraction: float = 1.0):
        self.users = split.train_users
        self.items = split.train_items
        self.indptr, self.indices = split.train_csr()
        self.n_items = split.n_items
        self.batch_size = int(batch_size)
        self.num_negatives = int(num_negatives)
        self.seed = int(seed)
        self.data_fraction = float(data_fraction)
        self.epoch = 0
        self._positives: TrainPositives | None = None
        self._current: list[torch.Tensor] = []   # the epoch being iterated (see __iter__)

    def __getstate__(self) -> dict:
        """Pickled (DDP spawn) without the lookup: each process rebuilds it once, rather than shipping it."""
        state = dict(self.__dict__)
        state["_positives"] = None
        state["_current"] = []
        return state

    def positives(self) -> TrainPositives:
        """The train-positive lookup, built on first use and kept for every later epoch."""
        if self._positives is None:
            self._positives = TrainPositives(self.indptr, self.indices, self.n_items)
        return self._positives

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``__iter__`` produce epoch ``epoch``."""
        self.epoch = int(epoch)

    def n_positives(self) -> int:
        """Positives used per epoch (after ``data_fraction``), over all ranks."""
        n = len(self.users)
        return n if self.data_fraction >= 1.0 else max(1, int(round(self.data_fraction * n)))

    def n_examples(self) -> int:
        """Examples per epoch: each positive plus its negatives."""
        return self.n_positives() * (1 + self.num_negatives)

    def __len__(self) -> int:
        rank, world = rank_world()
        n = (self.n_positives() // world) * (1 + self.num_negatives) if world > 1 else self.n_examples()
        return math.ceil(n / rank_batch(self.batch_size, world))

    def epoch_tensors(self, epoch: int, rank: int = 0, world: int = 1
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The shuffled (users, items, labels) of one epoch (of rank ``rank``'s shard of it), as whole tensors; users and
        items are int32 (:func:`~recsys.data.sampling.training_epoch`), labels float32."""
        rng = np.random.default_rng([self.seed, epoch])
        users, items = self.users, self.items
        n_pos = self.n_positives()
        if n_pos < len(users):
            pick = np.sort(rng.choice(len(users), size=n_pos, replace=False))
            users, items = users[pick], items[pick]
        if world > 1:  # this rank's positives; its negatives and shuffle from its own seed
            mine = rng.permutation(n_pos)[shard(n_pos, rank, world)]
            users, items, n_pos = users[mine], items[mine], len(mine)
            rng = np.random.default_rng([self.seed, epoch, 1 + rank])
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + (1_000_000_007 * (1 + rank) if world > 1
                                                                             else 0))
        # users / items come back int32 (half the memory: ~0.8 GB saved at ML-20M size); batches are int64 (__iter__)
        return training_epoch(users, items, self.n_items, self.num_negatives, rng, self.positives(), gen)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        rank, world = rank_world()
        # held in a list that release() empties: an epoch cut short leaves this generator suspended inside Lightning's
        # trainer, a reference cycle that would keep ~1.2 GB (ML-20M size) alive until the cycle collector runs
        self._current = held = list(self.epoch_tensors(epoch, rank, world))
        bs = rank_batch(self.batch_size, world)
        for start in range(0, len(held[0]), bs):
            if not held:  # released while suspended
                return
            end = start + bs  # copies, not views, and no local names: a batch Lightning keeps (its prefetched one)
            yield held[0][start:end].long(), held[1][start:end].long(), held[2][start:end].clone()  # holds no epoch
        held.clear()

    def release(self) -> None:
        """Free the current epoch's samples and the positives lookup (rebuilt on next use): called after fitting."""
        self._current.clear()
        self._positives = None


class EvalBatches(IterableDataset):
    """Batches of ``(users LongTensor[b], candidates LongTensor[b, 1 + n_neg])``; column 0 is the positive."""

    def __init__(self, users: np.ndarray, positives: np.ndarray, negatives: np.ndarray, batch_size: int):
        self.users = torch.as_tensor(np.asarray(users, dtype=np.int64))
        self.candidates = torch.as_tensor(np.concatenate(
            [np.asarray(positives, dtype=np.int64)[:, None], np.asarray(negatives, dtype=np.int64)], axis=1))
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.users), self.batch_size):
            yield self.users[start:start + self.batch_size], self.candidates[start:start + self.batch_size]


class RankingDataModule(L.LightningDataModule):
    """Training (fresh negatives each epoch) and sampled-candidate val/test loaders over an :class:`ImplicitSplit`."""

    def __init__(self, split: ImplicitSplit, batch_size: int = 256, num_negatives: int = 4, seed: int = 0,
                 eval_batch_users: int = 1024, data_fraction: float = 1.0):
        super().__init__()
        if batch_size < 1 or eval_batch_users < 1:
            raise ConfigError(f"batch sizes must be >= 1 (train.batch_size={batch_size}, "
                              f"eval_batch_users={eval_batch_users}).")
        if num_negatives < 0:
            raise ConfigError(f"train.num_negatives must be >= 0, got {num_negatives}.")
        if not 0.0 < data_fraction <= 1.0:
            raise ConfigError(f"data_fraction must be in (0, 1], got {data_fraction} (finetune.data_fraction).")
        self.split = split
        self.batch_size = batch_size
        self.num_negatives = num_negatives
        self.seed = seed
        self.eval_batch_users = eval_batch_users
        self.data_fraction = data_fraction
        self.steps_per_call = 1   # optimizer steps per training_step call (recsys.data.steps)
        self.train_data = TrainEpochs(split, batch_size, num_negatives, seed, data_fraction)
        self.val_data = EvalBatches(split.val_users, split.val_items, split.val_negatives, eval_batch_users)
        self.test_data = EvalBatches(split.test_users, split.test_items, split.test_negatives, eval_batch_users)

    @property
    def n_users(self) -> int:
        """Number of user indices (embedding rows)."""
        return self.split.n_users

    @property
    def n_items(self) -> int:
        """Number of item indices (embedding rows)."""
        return self.split.n_items

    def teardown(self, stage: str) -> None:
        """After ``fit``: release the training epoch's samples and lookup (see :meth:`TrainEpochs.release`)."""
        if stage == "fit":
            self.train_data.release()

    def train_dataloader(self) -> DataLoader:
        """Pre-batched training loader; each iteration is a new epoch with fresh negatives."""
        return train_loader(self.train_data, self.steps_per_call)

    def val_dataloader(self) -> DataLoader:
        """Validation users with their held-out positive (column 0) and sampled negatives."""
        return DataLoader(self.val_data, batch_size=None)

    def test_dataloader(self) -> DataLoader:
        """Test users with their test positive (column 0) and negatives."""
        return DataLoader(self.test_data, batch_size=None)
