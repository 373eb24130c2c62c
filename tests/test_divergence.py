"""NaN / inf config values and diverging training (issue 16, item 5): a non-finite number is a ConfigError naming the
key before any data is read or any MLflow run opens; a diverging stage stops with the epoch and step named, the run
ends FAILED, nothing is cached, and the process exits non-zero."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from torch.utils.data import DataLoader, TensorDataset

from recsys.errors import ConfigError, TrainingDiverged
from recsys.pipeline import validate
from recsys.tasks.guard import DivergenceGuard

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
TINY = ["train.batch_size=8192", "model.factors=4", "model.mlp_layers=[8,4]", "bench.requests=30", "bench.warmup=5",
        "bench.full_catalogue_requests=3", "bench.throughput_repeats=2", "bench.throughput_batch=512",
        "trainer.enable_progress_bar=false", "eval.full_ranking=false", "tracking.log_model=false"]


@pytest.mark.parametrize("overrides, key", [
    (["train.lr=nan"], "train.lr"), (["train.weight_decay=nan"], "train.weight_decay"),
    (["model.dropout=nan"], "model.dropout"), (["finetune.lr=nan"], "finetune.lr"),
    (["prune.ratio=nan"], "prune.ratio"), (["train.lr=inf"], "train.lr"), (["finetune.lr=-inf"], "finetune.lr"),
    (["distill=kd", "distill.student.factors=4", "distill.alpha=nan"], "distill.alpha"),
    (["distill=kd", "distill.student.factors=4", "distill.temperature=inf"], "distill.temperature"),
    (["train.divergence_factor=nan"], "train.divergence_factor"),
])
def test_non_finite_config_value_names_the_key(tmp_path, overrides, key):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.root_dir={tmp_path}", *overrides])
    with pytest.raises(ConfigError, match=rf"{key.replace('.', r'[.]')}=-?(nan|inf): must be a finite number"):
        validate(cfg)


def test_nan_lr_fails_before_the_run_opens(tmp_path):
    """From the command line: exit 2, the key in the message, no MLflow store and no cache written (no data read)."""
    env = {**os.environ, "RECSYS_ROOT": str(tmp_path), "RECSYS_DATA_DIR": str(tmp_path / "no-data-here")}
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "train.lr=nan"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "train.lr=nan: must be a finite number" in p.stderr
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / ".cache").exists()


class _Toy(L.LightningModule):
    """Loss = w^2 * scale per batch; ``nan_at`` makes the loss NaN from that global step on."""

    def __init__(self, grow: float = 1.0, nan_at: int | None = None) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.grow, self.nan_at = grow, nan_at

    def training_step(self, batch, batch_idx):
        scale = self.grow ** self.current_epoch
        loss = (self.w ** 2).sum() * scale
        if self.nan_at is not None and self.global_step >= self.nan_at:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(task: L.LightningModule, epochs: int = 4, factor: float | None = 10.0) -> None:
    dl = DataLoader(TensorDataset(torch.zeros(8, 1)), batch_size=2)
    L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[DivergenceGuard("dense", factor)]).fit(task, dl)


def test_guard_stops_on_non_finite_loss_with_epoch_and_step():
    with pytest.raises(TrainingDiverged, match=r"dense training diverged: loss=nan at epoch 1 \(batch 2, global step \d+"):
        _fit(_Toy(nan_at=6))


def test_guard_stops_when_epoch_loss_explodes_and_not_before():
    with pytest.raises(TrainingDiverged, match=r"epoch 2 mean loss 100 is above train.divergence_factor=10"):
        _fit(_Toy(grow=10.0))              # epoch losses 1, 10, 100: stopped at the third
    _fit(_Toy(grow=1.0))                   # flat loss: runs all epochs
    _fit(_Toy(grow=10.0), factor=None)     # guard's factor test off: runs all epochs


@pytest.mark.realdata
def test_diverging_training_fails_the_run_and_caches_nothing(tmp_path, shared_data_dir):
    env = {**os.environ, "RECSYS_ROOT": str(tmp_path), "RECSYS_DATA_DIR": str(shared_data_dir), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "train.lr=10", "train.epochs=3", *TINY], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "dense training diverged" in p.stderr and "epoch" in p.stderr and "step" in p.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert run.info.status == "FAILED"
    assert "diverged" in run.data.tags["failure"] and "global step" in run.data.tags["mlflow.note.content"]
    assert not list((tmp_path / ".cache" / "dense").glob("*.pt"))     # the diverged model is not the cached dense one
    assert "final/hr_at_10" not in run.data.metrics
