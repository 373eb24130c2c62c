"""PruningCallback under a real Lightning Trainer on synthetic tensors: masks stay enforced while fine-tuning, the
gradual schedule ends exactly at the final ratio, and masks + schedule position survive a checkpoint reload."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from recsys.compress.prune import (
    MagnitudePruning,
    PruningCallback,
    StructuredPruning,
    at_ratio,
    magnitude_targets,
    mask_state,
    n_removed,
    prune_,
    shrink,
    strip_,
)
from recsys.models.ncf import NeuMF
from recsys.tasks.ranking import RankingTask

USERS, ITEMS = 30, 25


def loader(n: int = 640, batch: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    u, i = torch.randint(0, USERS, (n,), generator=g), torch.randint(0, ITEMS, (n,), generator=g)
    y = ((u + i) % 3 == 0).float()
    return DataLoader(TensorDataset(u, i, y), batch_size=batch)


def trainer(tmp_path, epochs: int, cb: PruningCallback, **kw) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, callbacks=[cb], logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path), **kw)


def model() -> NeuMF:
    torch.manual_seed(0)
    return NeuMF(USERS, ITEMS, factors=4, mlp_layers=[8, 4])


def total_removed(m: NeuMF) -> tuple[int, int]:
    masks = mask_state(m)
    keys = magnitude_targets(m, "all")
    return sum(int((masks[k] == 0).sum()) for k in keys), sum(masks[k].numel() for k in keys)


def test_oneshot_masks_stay_enforced_while_training(tmp_path):
    m = model()
    spec = MagnitudePruning(0.5)
    prune_(m, spec)
    zeros_before = {k: v == 0 for k, v in mask_state(m).items()}
    cb = PruningCallback(lambda mm, r: prune_(mm, at_ratio(spec, r)), 0.5)
    task = RankingTask(m, lr=0.05)
    trainer(tmp_path, 2, cb).fit(task, train_dataloaders=loader())
    for k, z in zeros_before.items():
        mod, _, name = k.rpartition(".")
        sub = m.get_submodule(mod)
        assert bool((getattr(sub, name)[z] == 0).all()) and bool((getattr(sub, f"{name}_orig")[z] == 0).all())
        assert torch.equal(mask_state(m)[k] == 0, z)        # same mask: oneshot never re-ranks after training
    removed, total = total_removed(m)
    assert removed == n_removed(0.5, total)


def test_gradual_schedule_ends_at_exact_final_ratio(tmp_path):
    m = model()
    spec = MagnitudePruning(0.0)
    prune_(m, spec)
    cb = PruningCallback(lambda mm, r: prune_(mm, at_ratio(spec, r)), 0.7, "gradual", end_fraction=0.5, frequency=2)
    trainer(tmp_path, 2, cb).fit(RankingTask(m, lr=0.05), train_dataloaders=loader())
    ratios = [r for _, r in cb.history]
    assert ratios == sorted(ratios) and len(ratios) > 3          # several increasing steps, not one jump
    assert ratios[-1] == pytest.approx(0.7)
    removed, total = total_removed(m)
    assert removed == n_removed(0.7, total)


def test_masks_and_schedule_survive_checkpoint_reload(tmp_path):
    m = model()
    spec = MagnitudePruning(0.0)
    prune_(m, spec)
    fn = lambda mm, r: prune_(mm, at_ratio(spec, r))  # noqa: E731
    cb = PruningCallback(fn, 0.8, "gradual", end_fraction=1.0, frequency=1)
    ckpt = tmp_path / "mid.ckpt"
    mid: dict = {}

    class Interrupt(L.Callback):        # checkpoint after 10 of 30 steps (mid-schedule), then stop like a killed job
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 10:
                trainer.save_checkpoint(ckpt)
                mid.update(ratio=cb.ratio, masks=mask_state(m))
                raise RuntimeError("interrupted")

    t = trainer(tmp_path, 3, cb)
    t.callbacks.append(Interrupt())
    with pytest.raises(RuntimeError, match="interrupted"):
        t.fit(RankingTask(m, lr=0.05), train_dataloaders=loader())
    mid_ratio, mid_masks = mid["ratio"], mid["masks"]
    assert 0.0 < mid_ratio < 0.8
    saved = torch.load(ckpt, weights_only=False)
    state = next(v for k, v in saved["callbacks"].items() if "PruningCallback" in k)
    assert state["ratio"] == mid_ratio and all(torch.equal(state["masks"][k], v) for k, v in mid_masks.items())

    fresh = model()                                  # a plain, unmasked model: the callback installs the masks
    cb2 = PruningCallback(lambda mm, r: prune_(mm, at_ratio(spec, r)), 0.8, "gradual", end_fraction=1.0, frequency=1)
    seen: dict[str, torch.Tensor] = {}

    class Peek(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.update(mask_state(pl_module.model))

    t2 = L.Trainer(max_epochs=3, callbacks=[cb2, Peek()], logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    t2.fit(RankingTask(fresh, lr=0.05), train_dataloaders=loader(), ckpt_path=str(ckpt))
    assert all(torch.equal(seen[k], v) for k, v in mid_masks.items())      # restored exactly at resume
    resumed = cb2.history[len(state["history"]):]
    assert cb2.history[:len(state["history"])] == [tuple(h) for h in state["history"]]
    assert resumed and resumed[0][1] > mid_ratio                             # schedule continued, not restarted
    removed, total = total_removed(fresh)
    assert removed == n_removed(0.8, total)
    for k, v in mid_masks.items():                                           # earlier zeros are still zero
        assert bool((mask_state(fresh)[k][v == 0] == 0).all())


def test_structured_gradual_then_shrink(tmp_path):
    m = model()
    spec = StructuredPruning(0.0)
    prune_(m, spec)
    cb = PruningCallback(lambda mm, r: prune_(mm, at_ratio(spec, r)), 0.5, "gradual", frequency=2)
    trainer(tmp_path, 2, cb).fit(RankingTask(m, lr=0.05), train_dataloaders=loader())
    m.eval()
    small = shrink(strip_(m))
    assert small.config()["factors"] == 2 and small.config()["mlp_layers"] == [4, 2]
    u, i = next(iter(loader()))[:2]
    torch.testing.assert_close(small(u, i), m(u, i), rtol=0, atol=1e-5)
