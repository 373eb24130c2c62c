"""Optimizer steps without Lightning's and torch's per-step wrappers (``recsys.tasks.base.lean_steps``,
``recsys.nn.step.direct_step``): the same steps and the same step count as through the wrappers, and the wrappers
kept wherever something hooks a step (a callback, a profiler, an optimizer step hook)."""
from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.optim.optimizer import register_optimizer_step_pre_hook

from recsys.models import build_model
from recsys.nn.optim import AdagradM
from recsys.nn.step import direct_step
from recsys.tasks.base import get_family
from recsys.tasks.fit import StageTrainer
from recsys.tasks.optim import fused_adam

ROOT = Path(__file__).resolve().parents[1]


class _Probe(L.Callback):
    """Epoch-level only: records whether the task stepped lean, and the trainer's step count."""

    def on_train_end(self, trainer, pl_module) -> None:
        self.lean, self.steps = pl_module._lean, trainer.global_step


class _Backwards(L.Callback):
    """Hooks every backward: its steps must go through Lightning's wrappers, which call it."""

    def __init__(self) -> None:
        self.calls = 0

    def on_after_backward(self, trainer, pl_module) -> None:
        self.calls += 1


@pytest.mark.parametrize("overrides", [
    ["data=ml-100k", "model=neumf", "model.factors=8", "model.mlp_layers=[32,16]", "train.sparse=rowwise"],
    ["data=ml-100k-pos4", "model=deepfm"],
    ["data=yoochoose", "model=gru4rec", "model.hidden_size=16", "model.batch_size=16", "train.optimizer=adagradm"],
], ids=["ranking-rowwise", "ctr", "session-adagradm"])
def test_lean_steps_are_lightnings_steps_and_a_step_hook_keeps_the_wrappers(overrides, tiny_data_dir, tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.root_dir={tmp_path}", f"paths.data_dir={tiny_data_dir}",
                                           "train.epochs=2", "train.batch_size=256", "train.steps_per_call=4",
                                           "trainer.enable_progress_bar=false", *overrides])
    family = get_family(cfg.model.task)
    data = family.load_data(cfg)
    torch.manual_seed(0)
    init = build_model(family.model_spec(dict(cfg.model), data))
    runs = []
    for hooked in (False, True):
        model, probe, backwards = copy.deepcopy(init), _Probe(), _Backwards()
        torch.manual_seed(1)   # dropout draws from torch's global generator
        StageTrainer(family, data, cfg).train(model, "dense", callbacks=[probe] + ([backwards] if hooked else []),
                                              select_best=False)
        runs.append((model.state_dict(), probe, backwards))
    (lean_w, lean, _), (hooked_w, wrapped, backwards) = runs
    assert lean.lean and not wrapped.lean
    assert lean.steps == wrapped.steps == backwards.calls > 10   # every step counted, the hook called on each
    for name, w in lean_w.items():   # float32 rounding of multi-threaded reductions at most
        torch.testing.assert_close(w, hooked_w[name], rtol=0, atol=1e-6, msg=name)


def test_a_profiler_keeps_lightnings_wrappers(tiny_data_dir, tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.root_dir={tmp_path}", f"paths.data_dir={tiny_data_dir}",
                                           "data=ml-100k", "model=gmf", "model.factors=4", "train.epochs=1",
                                           "train.batch_size=4096", "trainer.enable_progress_bar=false",
                                           "+trainer.profiler=simple"])
    family = get_family(cfg.model.task)
    data = family.load_data(cfg)
    probe = _Probe()
    StageTrainer(family, data, cfg).train(build_model(family.model_spec(dict(cfg.model), data)), "dense",
                                          callbacks=[probe], select_best=False)
    assert probe.lean is False and probe.steps > 0


@pytest.mark.parametrize("make", [lambda ps: fused_adam(ps, lr=0.1), lambda ps: AdagradM(ps, lr=0.1)],
                         ids=["lean-fused-adam", "adagradm"])
def test_direct_step_is_the_unwrapped_update_unless_a_step_hook_is_registered(make):
    ps = [torch.nn.Parameter(torch.ones(3))]
    opt = make(ps)
    ps[0].grad = torch.full((3,), 0.5)
    assert direct_step(opt) == opt.update
    direct_step(opt)()
    moved = ps[0].detach().clone()
    assert (moved < 1).all()            # the update took a step
    calls = []
    h = opt.register_step_post_hook(lambda o, a, k: calls.append("own"))
    assert direct_step(opt) == opt.step
    direct_step(opt)()
    assert calls == ["own"] and (ps[0] < moved).all()
    h.remove()
    g = register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global"))
    try:
        assert direct_step(opt) == opt.step
        direct_step(opt)()
        assert calls == ["own", "global"]
    finally:
        g.remove()
    assert direct_step(opt) == opt.update
    assert direct_step(torch.optim.SGD(ps, lr=0.1)) != opt.update   # torch's own optimizers: their step
