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
from recsys.nn.optim import AdagradM
from recsys.tasks.base import TaskFamily, TrainableTask, model_kwargs

# model-config keys that configure training, not the network
TRAIN_KEYS = ("loss", "batch_size", "n_sample", "sample_alpha", "bpreg", "logq", "objective", "logq_form",
              "mask_duplicates", "loss_norm", "session_order", "epoch_end", "momentum", "xe_eps")
# official-GRU4Rec switches (conf/model/gru4rec.yaml): key -> allowed values
SWITCHES = {"logq_form": ("pop", "official"), "loss_norm": ("mean", "batch_size"), "session_order": ("id", "time"),
            "epoch_end": ("stop", "drain"), "mask_duplicates": (True, False)}


@torch.inference_mode()
def next_item_ranks(model: nn.Module, sessions: Sessions, batch_sessions: int = 512) -> torch.Tensor:
    """0-based rank of every target click among all items, given the clicks before it in its session (ties count
    against the target). Session-parallel, as the official evaluation: ``batch_sessions`` slots, a slot whose session
    ends takes the next session, and the batch shrinks at the end, so each step advances ``batch_sessions`` clicks;
    models without ``select_state`` go through padded batches instead (``padded_next_item_ranks``, same ranks)."""
    if not callable(getattr(model, "select_state", None)):
        return padded_next_item_ranks(model, sessions, batch_sessions)
    model.eval()
    it = SessionParallelBatches(sessions, batch_sessions, int(sessions.items.max(initial=0)) + 1, epoch_end="drain")
    if not len(it.usable):
        return torch.zeros(0, dtype=torch.long)
    pos, bounds, reset, keeps = it.steps(0)
    items, p = torch.from_numpy(sessions.items), torch.from_numpy(pos)
    inputs, nxt, is_target = items[p], items[p + 1], torch.from_numpy(sessions.targets[pos + 1])
    resets, out, state = torch.from_numpy(reset), [], None
    for i in range(len(bounds) - 1):
        a, b = int(bounds[i]), int(bounds[i + 1])
        if i in keeps:
            state = model.select_state(state, torch.from_numpy(keeps[i]))
        state = model.reset_state(model.init_state(b - a) if state is None else state, resets[a:b])
        h, state = model.advance(inputs[a:b], state)
        rows = torch.nonzero(is_target[a:b], as_tuple=True)[0]
        if len(rows):
            scores = model.item_scores(h[rows]).float()
            out.append(M.rank_of_target(scores, scores.gather(1, nxt[a:b][rows, None]).squeeze(1)))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


@torch.inference_mode()
def padded_next_item_ranks(model: nn.Module, sessions: Sessions, batch_sessions: int = 512) -> torch.Tensor:
    """``next_item_ranks`` through right-padded batches of sessions of similar length (any SessionModel); one step
    per click of the longest session of each batch."""
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

    # whether a step may take the model's hand-written gradients (GRU4Rec.xe_gradients) when it offers them and the
    # loop allows it (TrainableTask.takes_rows); False: always autograd (tests compare the two)
    hand_gradients = True

    def __init__(self, model: nn.Module, lr: float = 0.05, optimizer: str = "adagrad", weight_decay: float = 0.0,
                 stage: str = "dense", loss: str = "cross-entropy", bpreg: float = 0.0, logq: float = 0.0,
                 item_counts: np.ndarray | None = None, ks: tuple[int, ...] = (20, 10), logq_form: str = "pop",
                 sample_alpha: float = 0.75, mask_duplicates: bool = True, loss_norm: str = "mean",
                 batch_size: int | None = None, momentum: float = 0.0, xe_eps: float = 0.0) -> None:
        super().__init__(model, lr, optimizer, weight_decay, stage)
        self.loss_name, self.bpreg, self.logq, self.ks = loss, bpreg, logq, ks
        self.logq_form, self.sample_alpha, self.mask_duplicates = logq_form, float(sample_alpha), bool(mask_duplicates)
        self.sum_over = int(batch_size) if loss_norm == "batch_size" and batch_size else None
        self.momentum, self.xe_eps = float(momentum), float(xe_eps)
        counts = torch.as_tensor(item_counts if item_counts is not None else np.ones(1), dtype=torch.float32)
        self.register_buffer("log_pop", torch.log(counts.clamp(min=1) / counts.sum()), persistent=False)
        self.register_buffer("log_count", torch.log(counts.clamp(min=1)), persistent=False)
        self.hidden: Any = None          # the model's per-session state (SessionModel contract, models/base.py)
        self._rows = 0                   # sessions that state holds
        self._ranks: list[torch.Tensor] = []
        # Manual optimization: zero_grad / backward / step written out in train_step. A GRU4Rec step is a few ms of
        # small ops, and Lightning's automatic loop (closure, per-step result collection) added ~1 ms to each (as in
        # the ranking task). Callbacks see the same hooks; trainer.gradient_clip_val / accumulate_grad_batches do not
        # apply to this task.
        self.automatic_optimization = False

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if isinstance(getattr(dm, "data", None), SessionData):   # popularity for the logQ correction
            counts = torch.as_tensor(dm.data.item_counts(), dtype=torch.float32).clamp(min=1)
            self.log_pop = torch.log(counts / counts.sum()).to(self.device)
            self.log_count = torch.log(counts).to(self.device)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "adagradm":   # GRU4Rec's optimiser takes the momentum of the model config
            params = [p for p in self.model.parameters() if p.requires_grad]
            return AdagradM(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return super().configure_optimizers()

    def logq_offsets(self, targets: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor | None:
        """Official logQ form: in-batch targets get -logq*log(count), extra samples -logq*alpha*log(count) (their
        sampling probability is count^alpha); None for the default form (-logq*log p for every candidate)."""
        if self.logq_form != "official" or self.logq <= 0:
            return None
        return -self.logq * torch.cat([self.log_count[targets], self.sample_alpha * self.log_count[negatives]])
    def on_train_epoch_start(self) -> None:
        self.hidden = None

    def train_step(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        inputs, targets, reset, negatives = batch[:4]
        if len(batch) > 4 and len(batch[4]) and self.hidden is not None:   # a shrinking batch (epoch_end: drain)
            self.hidden, self._rows = self.model.select_state(self.hidden, batch[4]), len(batch[4])
        if self.hidden is None or self._rows != len(inputs):
            self.hidden, self._rows = self.model.init_state(len(inputs), inputs.device), len(inputs)
        # the model's reset_state: slots where a new session starts get a fresh state; the state carries over
        # between steps without its gradient (GRU4Rec: truncated BPTT of one step, as the official code)
        state = self.model.reset_state(self.hidden, reset)
        grads = getattr(self.model, "xe_gradients", None)
        if grads is not None and self.hand_gradients and self.loss_name == "cross-entropy":
            opt = self.optimizers()
            if self.takes_rows(opt):   # the step written out (GRU4Rec.xe_gradients) where the model and loop allow
                opt.optimizer.zero_grad()
                cand = torch.cat([targets, negatives])
                offsets = self.logq_offsets(targets, negatives)
                if offsets is None and self.logq > 0:
                    offsets = -self.logq * self.log_pop[cand]
                got = grads(inputs, state, cand, offsets, self.mask_duplicates, self.sum_over, self.xe_eps)
                if got is not None:
                    loss, self.hidden, rows = got
                    return self.rows_step(opt, loss, rows, len(inputs))
        scores = None
        if hasattr(self.model, "train_scores"):   # one fused read of the item table (GRU4Rec)
            h, self.hidden, scores = self.model.train_scores(inputs, state, torch.cat([targets, negatives]))
        else:
            h, self.hidden = self.model.advance(inputs, state)
        loss = sampled_loss(self.model, h, targets, negatives, self.loss_name, self.bpreg, self.logq, self.log_pop,
                            offsets=self.logq_offsets(targets, negatives), mask_duplicates=self.mask_duplicates,
                            sum_over=self.sum_over, scores=scores, xe_eps=self.xe_eps)
        return self.manual_step(self.add_extra_losses(loss, batch, h), len(inputs))

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
        for key, allowed in SWITCHES.items():
            if key in model and model[key] not in allowed:
                errs.append(f"model.{key}={model[key]!r}: must be one of {list(allowed)}")
        mom = model.get("momentum", 0.0)
        if isinstance(mom, bool) or not isinstance(mom, (int, float)) or not 0.0 <= mom < 1.0:
            errs.append(f"model.momentum={mom!r}: must be a number in [0, 1) (used by train.optimizer=adagradm)")
        elif mom > 0 and (cfg.get("train", {}) or {}).get("optimizer") != "adagradm":
            errs.append(f"model.momentum={mom}: only train.optimizer=adagradm has momentum; set train.optimizer=adagradm "
                        "or model.momentum=0")
        eps = model.get("xe_eps", 0.0)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps < 1.0:
            errs.append(f"model.xe_eps={eps!r}: must be a number in [0, 1) (0: exact -log p; official GRU4Rec: 1e-24)")
        opt = (cfg.get("train", {}) or {}).get("optimizer")
        if model.get("sparse_items") and opt not in ("adagrad", "adagradm"):
            errs.append(f"model.sparse_items=true with train.optimizer={opt!r}: sparse row gradients need "
                        "train.optimizer=adagradm (or adagrad); set one of them or model.sparse_items=false")
        if model.get("epoch_end") == "drain" and "gru4rec" not in str(model.get("_target_", "")):
            errs.append("model.epoch_end='drain' needs a model with select_state (GRU4Rec)")
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
                           loss=m.loss, bpreg=float(m.get("bpreg", 0.0)), logq=float(m.get("logq", 0.0)),
                           logq_form=str(m.get("logq_form", "pop")), sample_alpha=float(m.get("sample_alpha", 0.75)),
                           mask_duplicates=bool(m.get("mask_duplicates", True)),
                           loss_norm=str(m.get("loss_norm", "mean")), batch_size=int(m.batch_size),
                           momentum=float(m.get("momentum", 0.0)), xe_eps=float(m.get("xe_eps", 0.0)))

    def make_datamodule(self, data: SessionData, cfg: Any, data_fraction: float = 1.0) -> SessionDataModule:
        m = cfg.model
        return SessionDataModule(data, int(m.batch_size), int(m.n_sample), float(m.get("sample_alpha", 0.75)),
                                 int(cfg.seed), data_fraction, str(m.get("session_order", "id")),
                                 str(m.get("epoch_end", "stop")))

    def samples_per_epoch(self, data: SessionData, cfg: Any, data_fraction: float = 1.0) -> float:
        """Events (clicks with a next click) processed per epoch: steps x parallel sessions."""
        m = cfg.model
        it = SessionParallelBatches(data.train, int(m.batch_size), data.n_items, 0, 1.0, int(cfg.seed), data_fraction,
                                    order=str(m.get("session_order", "id")), epoch_end=str(m.get("epoch_end", "stop")))
        return float(it.n_events(0))

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
