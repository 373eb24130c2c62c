"""``train.steps_per_call``: several mini-batches per Lightning ``training_step`` call take exactly the optimizer steps
one-per-call training takes (all three families, a partial last call included); ``auto`` falls back to one per call
where something watches single steps; a bad value is refused before training."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir

from recsys.data.steps import Chunked, StepChunk
from recsys.models import build_model
from recsys.tasks.base import get_family
from recsys.tasks.fit import AUTO_STEPS_PER_CALL, StageTrainer, steps_per_call, watches_steps

ROOT = Path(__file__).resolve().parents[1]


class _Calls(L.Callback):
    def __init__(self) -> None:
        self.calls, self.steps = 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.calls += 1
        self.steps = trainer.global_step


class _EpochsOnly(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass


def test_chunks_keep_every_batch_in_order_and_count_calls():
    batches = [(torch.tensor([i]),) for i in range(11)]
    chunks = list(Chunked(batches, 4))
    assert [len(c) for c in chunks] == [4, 4, 3] and len(Chunked(batches, 4)) == 3
    assert all(type(c) is StepChunk for c in chunks)
    assert [b[0].item() for c in chunks for b in c] == list(range(11))


@pytest.mark.parametrize("overrides", [
    ["data=ml-100k", "model=neumf", "model.factors=8", "model.mlp_layers=[32,16]", "train.sparse=rowwise"],
    ["data=ml-100k-pos4", "model=deepfm"],
    ["data=yoochoose", "model=gru4rec", "model.hidden_size=16", "model.batch_size=16"],
], ids=["ranking-rowwise", "ctr", "session"])
def test_several_steps_per_call_take_the_same_steps(overrides, tiny_data_dir, tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.root_dir={tmp_path}", f"paths.data_dir={tiny_data_dir}",
                                           "train.epochs=2", "train.batch_size=256", "trainer.enable_progress_bar=false",
                                           *overrides])
    family = get_family(cfg.model.task)
    data = family.load_data(cfg)
    torch.manual_seed(0)
    init = build_model(family.model_spec(dict(cfg.model), data))
    states, counts = [], []
    for k in (1, 5):
        cfg.train.steps_per_call = k
        model, calls = copy.deepcopy(init), _Calls()
        torch.manual_seed(1)   # dropout draws from torch's global generator
        StageTrainer(family, data, cfg).train(model, "dense", callbacks=[calls], select_best=False)
        states.append(model.state_dict())
        counts.append(calls)
    assert counts[0].steps == counts[1].steps > 10 and counts[0].calls == counts[0].steps
    per_epoch = counts[0].steps // 2
    assert counts[1].calls == 2 * -(-per_epoch // 5)                 # ceil: the last call of an epoch is shorter
    # the same steps: equal to float32 rounding (two one-per-call runs of the GRU differ by ~1 ulp as well:
    # multi-threaded reductions)
    for name, w in states[0].items():
        torch.testing.assert_close(w, states[1][name], rtol=0, atol=1e-6, msg=name)


def test_auto_is_one_step_per_call_where_single_steps_are_watched():
    assert steps_per_call("auto", {"strategy": "auto", "devices": 1}, []) == AUTO_STEPS_PER_CALL
    assert steps_per_call("auto", {}, [_Calls()]) == 1                        # hooks single steps
    assert steps_per_call("auto", {}, [_EpochsOnly()]) == AUTO_STEPS_PER_CALL   # epoch boundaries only
    from recsys.compress.distill.callback import TeacherCallback
    from recsys.compress.prune.callback import PruningCallback
    from recsys.tasks.guard import DivergenceGuard
    assert watches_steps(PruningCallback) and watches_steps(TeacherCallback) and watches_steps(DivergenceGuard)
    assert steps_per_call("auto", {"strategy": "ddp", "devices": 2}, []) == 1
    assert steps_per_call("auto", {"limit_train_batches": 20}, []) == 1      # counts batches
    assert steps_per_call("auto", {"limit_train_batches": 0.5}, []) == AUTO_STEPS_PER_CALL   # a fraction
    assert steps_per_call("auto", {"max_steps": 100}, []) == 1
    assert steps_per_call(8, {"strategy": "ddp"}, [_Calls()]) == 8


def test_bad_steps_per_call_is_refused_before_training(tmp_path):
    p = subprocess.run([sys.executable, "run.py", "train.steps_per_call=0", f"paths.root_dir={tmp_path}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "train.steps_per_call=0: must be a positive integer or auto" in p.stderr
