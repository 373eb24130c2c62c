"""RankingDataModule: an epoch covers every positive once with its negatives; epochs differ; lengths match."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.data.datamodule import RankingDataModule
from recsys.data.splits import build_split
from recsys.errors import ConfigError
from test_data_splits import _write_csv


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dm")
    cfg = _write_csv(tmp, n_users=80, n_items=50)
    return build_split(cfg, tmp, tmp / "cache", seed=0)


def _epoch(loader):
    batches = list(loader)
    users, items, labels = (torch.cat(t) for t in zip(*batches))
    return batches, users.numpy(), items.numpy(), labels.numpy()


def test_epoch_covers_positives_once(split):
    dm = RankingDataModule(split, batch_size=64, num_negatives=3, seed=7)
    loader = dm.train_dataloader()
    batches, users, items, labels = _epoch(loader)
    assert len(batches) == len(loader) == int(np.ceil(len(split.train_users) * 4 / 64))
    assert all(b[0].dtype == torch.int64 and b[2].dtype == torch.float32 for b in batches)
    n = split.n_items
    pos = np.sort(users[labels == 1] * n + items[labels == 1])
    assert np.array_equal(pos, np.sort(split.train_users * n + split.train_items))
    neg_u, neg_i = users[labels == 0], items[labels == 0]
    assert len(neg_u) == 3 * len(split.train_users)
    assert np.array_equal(np.bincount(neg_u, minlength=split.n_users),
                          3 * np.bincount(split.train_users, minlength=split.n_users))
    assert not np.isin(neg_u * n + neg_i, split.train_users * n + split.train_items).any()
    _, users2, items2, labels2 = _epoch(loader)
    assert not np.array_equal(items, items2)  # fresh negatives and a new shuffle
    # the same (seed, epoch) is reproducible
    dm2 = RankingDataModule(split, batch_size=64, num_negatives=3, seed=7)
    _, u_again, i_again, _ = _epoch(dm2.train_dataloader())
    assert np.array_equal(users, u_again) and np.array_equal(items, i_again)


def test_data_fraction(split):
    dm = RankingDataModule(split, batch_size=32, num_negatives=2, seed=1, data_fraction=0.5)
    loader = dm.train_dataloader()
    _, users, items, labels = _epoch(loader)
    n_pos = round(0.5 * len(split.train_users))
    assert int(labels.sum()) == n_pos and len(labels) == 3 * n_pos
    assert len(loader) == int(np.ceil(3 * n_pos / 32))
    with pytest.raises(ConfigError, match="data_fraction"):
        RankingDataModule(split, data_fraction=0.0)


def test_eval_loaders(split):
    dm = RankingDataModule(split, batch_size=32, num_negatives=2, seed=1, eval_batch_users=16)
    for loader, users, pos, negs in ((dm.val_dataloader(), split.val_users, split.val_items, split.val_negatives),
                                     (dm.test_dataloader(), split.test_users, split.test_items, split.test_negatives)):
        batches = list(loader)
        assert len(batches) == len(loader) == int(np.ceil(len(users) / 16))
        u = torch.cat([b[0] for b in batches]).numpy()
        c = torch.cat([b[1] for b in batches]).numpy()
        assert np.array_equal(u, users) and np.array_equal(c[:, 0], pos) and np.array_equal(c[:, 1:], negs)
        assert c.shape[1] == 1 + negs.shape[1]


# sha256 of epochs 0-2 (single process, and rank 1 of 2) for the toy split below, seed 7, data_fraction 0.8:
# generated from main at 9e1d2b4, BEFORE the train-positive lookup was built once per split, so this proves the
# reuse (and the in-place, lower-memory epoch assembly, and the int32 epoch tensors) changed no draw. Any change to the epoch plan, the negatives or the shuffle must update it deliberately.
_EPOCHS_SHA256 = "9a1ffeeea7fcd26edf22caf080edeed47962a109fe8e049cd7f7160328cf9024"


@pytest.mark.parametrize("lookup", ["dense", "bitset", "keys"])
def test_positives_lookup_built_once_and_epochs_unchanged(lookup, monkeypatch, tmp_path):
    import hashlib

    from recsys.data import datamodule, sampling

    if lookup != "dense":  # the bitset (ML-20M size) or sorted-keys lookup, queried in small blocks
        monkeypatch.setattr(sampling, "_DENSE_CELLS", 0)
        monkeypatch.setattr(sampling, "_CHUNK", 7)
    if lookup == "keys":
        monkeypatch.setattr(sampling, "_BITSET_CELLS", 0)
    built = []
    real = sampling.TrainPositives

    class Counting(real):
        def __init__(self, *a, **k):
            built.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(datamodule, "TrainPositives", Counting)
    toy = build_split(_write_csv(tmp_path, n_users=80, n_items=50), tmp_path, tmp_path / "cache", seed=0)
    dm = RankingDataModule(toy, batch_size=64, num_negatives=3, seed=7, data_fraction=0.8)
    h = hashlib.sha256()
    for ep in range(3):
        for rank, world in ((0, 1), (1, 2)):
            for t in dm.train_data.epoch_tensors(ep, rank, world):
                assert t.dtype in (torch.float32, torch.int32)
                h.update((t if t.is_floating_point() else t.long()).numpy().tobytes())  # hashed as the int64 it was
    assert h.hexdigest() == _EPOCHS_SHA256
    assert len(built) == 1  # six epoch draws, one lookup
    import pickle
    assert pickle.loads(pickle.dumps(dm.train_data))._positives is None  # DDP spawn does not ship it


def test_fit_cut_short_releases_the_epoch(split):
    """An epoch stopped early leaves its generator suspended in Lightning's trainer (a reference cycle): teardown
    after fit empties it, so the epoch's samples (1.2 GB at ML-20M size) do not live on into evaluation."""
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(split.n_users, 1)

        def training_step(self, batch, i):
            return self.emb(batch[0]).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = RankingDataModule(split, batch_size=16, num_negatives=2, seed=1)
    it = iter(dm.train_data)
    next(it)
    assert len(dm.train_data._current) == 3 and dm.train_data._positives is not None
    dm.teardown("fit")
    assert dm.train_data._current == [] and dm.train_data._positives is None
    assert next(it, None) is None   # a released generator ends instead of yielding freed samples
    b = next(iter(dm.train_data))
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in b)  # no view of the epoch
    L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(Tiny(), datamodule=dm)
    assert dm.train_data._current == [] and dm.train_data._positives is None
    assert len(list(dm.train_dataloader())) == len(dm.train_data)   # the next epoch rebuilds what it needs
