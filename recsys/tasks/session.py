"""Session-based next-item task (GRU4Rec): session-parallel training with sampled losses, evaluation by the rank of
every next click among all items (recall@k / MRR@k, ties pessimistic), latency of one session's next-click request."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from recsys.data.config import validate_data_cfg
from recsys.data.session_datamodule import SessionDataModule
from recsys.data.sessions import (
    SessionData,
    SessionParallelBatches,
    Sessions,
    load_session_data,
    order_problem,
    padded,
    parse_session_cfg,
)
from recsys.errors import ConfigError
from recsys.evaluation import metrics as M
from recsys.measure.latency import LatencyConfig, session_latency
from recsys.models.base import LOSSES, sampled_loss
from recsys.tasks.base import TaskFamily, TrainableTask, model_kwargs

# model-config keys that configure training, not the network
TRAIN_KEYS = ("loss", "batch_size", "n_sample", "sample_alpha", "bpreg", "logq", "objective")


@torch.inference_mode()
def next_item_ranks(model: nn.Module, sessions: Sessions, batch_sessions: int = 512) -> torch.Tensor:
    """0-based rank of every target click among all items, given the clicks before it in its session."""
    model.eval()
    lengths = np.diff(sessions.offsets)
    order = np.argsort(lengths, kind="stable")           # similar lengths together: less padding
    out = []
    for s in range(0, len(order), batch_sessions):
        seq, lens, tgt = padded(sessions, order[s:s + batch_sessions])
        state = model.init_state(len(seq))
        for t in range(int(lens.max()) - 1):
            live = t < lens
            h, new_state = model.advance(seq[:, t], state)
            state = model.keep_state(new_state, state, live)
            rows = torch.nonzero(tgt[:, t + 1], as_tuple=True)[0]
            if len(rows):
                scores = model.item_scores(h[rows]).float()
                target = seq[rows, t + 1]
                out.append(M.rank_of_target(scores, scores.gather(1, target[:, None]).squeeze(1)))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def session_metrics(ranks: torch.Tensor, ks: tuple[int, ...], prefix: str = "") -> dict[str, float]:
    """recall@k (= HR@k with one target per row), MRR@k and NDCG@k of next-item ranks."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"{prefix}recall_at_{k}"] = float(M.hit_rate_at_k(ranks, k))
        out[f"{prefix}hr_at_{k}"] = out[f"{prefix}recall_at_{k}"]
        out[f"{prefix}mrr_at_{k}"] = float(M.mrr_at_k(ranks, k))
        out[f"{prefix}ndcg_at_{k}"] = float(M.ndcg_at_k(ranks, k))
    return out


class SessionTask(TrainableTask):
    """Trains a session model (the SessionModel contract of models/base.py) on session-parallel batches; logs ``<stage>/epoch_val_recall_at_20`` etc."""

    def __init__(self, model: nn.Module, lr: float = 0.05, optimizer: str = "adagrad", weight_decay: float = 0.0,
                 stage: str = "dense", loss: str = "cross-entropy", bpreg: float = 0.0, logq: float = 0.0,
                 item_counts: np.ndarray | None = None, ks: tuple[int, ...] = (20, 10)) -> None:
        super().__init__(model, lr, optimizer, weight_decay, stage)
        self.loss_name, self.bpreg, self.logq, self.ks = loss, bpreg, logq, ks
        counts = torch.as_tensor(item_counts if item_counts is not None else np.ones(1), dtype=torch.float32)
        self.register_buffer("log_pop", torch.log(counts.clamp(min=1) / counts.sum()), persistent=False)
        self.hidden: Any = None          # the model's per-session state (SessionModel contract, models/base.py)
        self._rows = 0                   # sessions that state holds
        self._ranks: list[torch.Tensor] = []

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if isinstance(getattr(dm, "data", None), SessionData):   # popularity for the logQ correction
            counts = torch.as_tensor(dm.data.item_counts(), dtype=torch.float32).clamp(min=1)
            self.log_pop = torch.log(counts / counts.sum()).to(self.device)

    def on_train_epoch_start(self) -> None:
        self.hidden = None

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        inputs, targets, reset, negatives = batch
        if self.hidden is None or self._rows != len(inputs):
            self.hidden, self._rows = self.model.init_state(len(inputs), inputs.device), len(inputs)
        # the model's reset_state: slots where a new session starts get a fresh state; the state carries over
        # between steps without its gradient (GRU4Rec: truncated BPTT of one step, as the official code)
        h, self.hidden = self.model.advance(inputs, self.model.reset_state(self.hidden, reset))
        loss = sampled_loss(self.model, h, targets, negatives, self.loss_name, self.bpreg, self.logq, self.log_pop)
        loss = self.add_extra_losses(loss, batch, h)
        self.log(f"{self.stage}/epoch_train_loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(inputs))
        return loss

    def validation_step(self, batch: Sessions, batch_idx: int) -> None:
        self._ranks.append(next_item_ranks(self.model, batch))

    def on_validation_epoch_end(self) -> None:
        if not self._ranks:
            return
        ranks = torch.cat(self._ranks)
        self._ranks.clear()
        for k, v in session_metrics(ranks, self.ks, "val_").items():
            if not k.startswith("val_ndcg"):
                self.log(f"{self.stage}/epoch_{k}", v, prog_bar=k.endswith("_20"))


class SessionFamily(TaskFamily):
    """Next-item prediction on sessions (GRU4Rec): all-item ranking of every next click; one click per request."""

    name = "session"
    monitor = "val_recall_at_20"

    def check(self, cfg: dict[str, Any]) -> list[str]:
        data, model = cfg.get("data", {}) or {}, cfg.get("model", {}) or {}
        errs: list[str] = []
        problem = order_problem(data, str(model.get("name")))
        if problem:
            return [problem]
        try:
            if data.get("format") == "sessions":
                parse_session_cfg(data)
            else:
                validate_data_cfg(data, data_dir=cfg.get("paths", {}).get("data_dir"),
                                  cache_dir=cfg.get("paths", {}).get("cache_dir"))
        except ConfigError as e:
            errs.append(str(e))
        if model.get("loss") not in LOSSES:
            errs.append(f"model.loss={model.get('loss')!r}: must be one of {list(LOSSES)}")
        for key in ("batch_size", "hidden_size", "layers"):
            v = model.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                errs.append(f"model.{key}={v!r}: must be a positive integer")
        v = model.get("n_sample")
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            errs.append(f"model.n_sample={v!r}: must be an integer >= 0 (extra negatives per step)")
        return errs

    def load_data(self, cfg: Any) -> SessionData:
        return load_session_data(OmegaConf.to_container(cfg.data, resolve=True), cfg.paths.data_dir,
                                 cfg.paths.cache_dir)

    def data_summary(self, data: SessionData) -> tuple[dict[str, str], dict[str, float]]:
        return ({"dataset": data.name, "dataset_checksum": data.checksum, "split": data.split_rule},
                {"data/n_items": data.n_items, "data/n_train_events": data.train.n_events,
                 "data/n_train_sessions": data.train.n_sessions, "data/n_test_events": data.test.n_events,
                 "data/n_test_targets": data.test.n_targets, "data/n_val_targets": data.val.n_targets,
                 "data/dropped_test_events": data.dropped_test_events, "data/skipped_lines": data.skipped_lines})

    def model_spec(self, model_cfg: dict[str, Any], data: SessionData) -> dict[str, Any]:
        kw = {k: v for k, v in model_kwargs(model_cfg).items() if k not in TRAIN_KEYS}
        return {**kw, "n_items": data.n_items}

    def make_task(self, model: nn.Module, cfg: Any, stage: str, lr: float, optimizer: str) -> SessionTask:
        m = cfg.model
        return SessionTask(model, lr=lr, optimizer=optimizer, weight_decay=cfg.train.weight_decay, stage=stage,
                           loss=m.loss, bpreg=float(m.get("bpreg", 0.0)), logq=float(m.get("logq", 0.0)))

    def make_datamodule(self, data: SessionData, cfg: Any, data_fraction: float = 1.0) -> SessionDataModule:
        m = cfg.model
        return SessionDataModule(data, int(m.batch_size), int(m.n_sample), float(m.get("sample_alpha", 0.75)),
                                 int(cfg.seed), data_fraction)

    def samples_per_epoch(self, data: SessionData, cfg: Any, data_fraction: float = 1.0) -> float:
        """Events (clicks with a next click) processed per epoch: steps x parallel sessions."""
        it = SessionParallelBatches(data.train, int(cfg.model.batch_size), data.n_items, 0, 1.0, int(cfg.seed),
                                    data_fraction)
        return float(it.n_steps(0) * it.batch_size)

    def evaluate(self, model: nn.Module, data: SessionData, cfg: Any) -> dict[str, float]:
        ks = tuple(sorted({20, 10, *(int(k) for k in cfg.eval.topk)}, reverse=True))
        t0 = time.perf_counter()
        ranks = next_item_ranks(model, data.test)
        out = session_metrics(ranks, ks)
        out["eval_seconds"] = time.perf_counter() - t0
        out["eval_events_per_s"] = len(ranks) / max(out["eval_seconds"], 1e-9)
        out.update({k: v for k, v in session_metrics(next_item_ranks(model, data.val), ks, "val_").items()})
        return out

    def example_inputs(self, data: SessionData, n: int = 256) -> tuple[torch.Tensor, ...]:
        rows = np.arange(min(n, data.test.n_sessions))
        seq, lens, _ = padded(data.test, rows)
        return seq, lens

    def latency(self, model: nn.Module, data: SessionData, cfg: Any) -> dict[str, float]:
        """One request = one session's new click + its stored state -> scores of all items (``session_latency``)."""
        b = cfg.bench
        return session_latency(model, data.n_items, LatencyConfig(
            threads=int(b.threads), warmup=int(b.warmup), requests=int(b.requests),
            throughput_batch=int(b.throughput_batch), throughput_repeats=int(b.throughput_repeats)))


FAMILY = SessionFamily()
