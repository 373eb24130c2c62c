"""A task family (ranking, ctr, session) owns its data, its LightningModule, its evaluation protocol and its request
shape for latency, so the pipeline never special-cases a model. ``model.task`` in the model config names the family;
``recsys.tasks.<task>`` must define ``FAMILY``."""
from __future__ import annotations

import importlib
from typing import Any

import lightning as L
import torch
from torch import nn

from recsys.data.steps import StepChunk
from recsys.nn.optim import AdagradM
from recsys.nn.step import direct_step
from recsys.tasks.optim import build_sparse_adam, fused_adam, resolve_sparse

MODEL_META_KEYS = ("name", "task")
OPTIMIZERS = {"adam": fused_adam, "adam_loop": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
              "adagrad": torch.optim.Adagrad, "adagradm": AdagradM}   # adagradm: GRU4Rec's (recsys/nn/optim.py)
# adam: torch Adam with its fused CPU kernel (recsys.tasks.optim.fused_adam); adam_loop: torch's CPU default (a
# per-tensor loop of ~5 element-wise passes), the same math, kept to measure against (experiments/ncf_benchmark.py).


class TrainableTask(L.LightningModule):
    """What every family's LightningModule shares: the wrapped model, the optimizer choice, and ``extra_losses``.

    Extra loss terms (distillation, regularisers) are registered by callbacks: a callback cannot change the loss itself,
    so the task adds ``term(task, batch, out)`` for each registered term (``out`` = the family's model output).
    """

    def __init__(self, model: nn.Module, lr: float, optimizer: str, weight_decay: float, stage: str,
                 sparse: Any = "false") -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer={optimizer!r} is not one of {sorted(OPTIMIZERS)}")
        self.model, self.lr, self.optimizer_name, self.weight_decay = model, lr, optimizer, weight_decay
        self.stage = stage
        self.extra_losses: list[Any] = []
        self.sparse = resolve_sparse(sparse, optimizer, weight_decay, model)   # row-wise embedding updates
        self._sparse_modules: list[nn.Embedding] = []
        self._rowwise: Any = None   # a RowwiseAdam while training with it: flushed before validation and at the end
        # [loss summed on the tensor, rows]: logged once per epoch (no per-step log); a list mutated in place, as
        # nn.Module.__setattr__ on every step cost ~1 % of a batch-256 step (py-spy)
        self._epoch_loss: list = [None, 0]
        self._lean = False   # step without Lightning's per-step wrappers: decided in on_train_start (lean_steps)

    def add_extra_losses(self, loss: torch.Tensor, batch: Any, out: torch.Tensor) -> torch.Tensor:
        for term in self.extra_losses:
            loss = loss + term(self, batch, out)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.sparse:   # sparse embedding gradients: RowwiseAdam, SparseAdam or SGD, see recsys.tasks.optim
            opt, self._sparse_modules = build_sparse_adam(self.model, self.lr, self.optimizer_name, self.sparse)
            self._rowwise = opt if hasattr(opt, "flush") else None
            return opt
        params = [p for p in self.model.parameters() if p.requires_grad]
        return OPTIMIZERS[self.optimizer_name](params, lr=self.lr, weight_decay=self.weight_decay)

    def flush_rows(self) -> None:
        """Bring rows a row-wise optimizer has not touched lately up to date (dense Adam's weights): before anything
        reads the whole tables (validation, checkpoints, the end of training)."""
        if self._rowwise is not None:
            self._rowwise.flush()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """One optimizer step per mini-batch (the family's ``train_step``); a :class:`~recsys.data.steps.StepChunk`
        (``train.steps_per_call`` > 1) is several consecutive mini-batches, stepped in order; its losses come back as
        one 1-D tensor (the divergence guard reads each step's)."""
        if type(batch) is StepChunk:
            return torch.stack([self.train_step(b) for b in batch])
        return self.train_step(batch)

    def train_step(self, batch: Any) -> torch.Tensor:
        """One mini-batch: forward, loss, :meth:`manual_step`; returns the detached loss."""
        raise NotImplementedError

    def on_train_start(self) -> None:
        self._lean = lean_steps(self)

    def manual_step(self, loss: torch.Tensor, n: int) -> torch.Tensor:
        """One optimizer step written out (tasks with ``automatic_optimization = False``: Lightning's automatic loop
        cost ~1 ms per step): zero_grad / backward / step, and the epoch's loss summed over ``n`` rows on the tensor.
        Where nothing hooks single steps (:func:`lean_steps`), backward and the step skip Lightning's wrappers (and
        torch's, :func:`~recsys.nn.step.direct_step`); the step is still counted (``trainer.global_step``)."""
        opt = self.optimizers()
        if self._lean:
            raw = opt.optimizer
            raw.zero_grad()
            loss.backward()
            opt._on_before_step()   # the manual loop's step counting (what LightningOptimizer.step wraps around)
            direct_step(raw)()
            opt._on_after_step()
        else:
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        return self._count_loss(loss.detach(), n)

    def takes_rows(self, opt: Any) -> bool:
        """Whether a step may take hand-written gradients through ``opt``'s ``update_rows`` (:meth:`rows_step`):
        lean steps (:func:`lean_steps`: no hook expects backward or the wrapped step), no extra loss term, an
        optimizer with ``update_rows`` and no step hook on it. ``opt``: ``self.optimizers()``."""
        if not self._lean or self.extra_losses:
            return False
        raw = opt.optimizer
        return hasattr(raw, "update_rows") and direct_step(raw) == raw.update

    def rows_step(self, opt: Any, loss: torch.Tensor, rows: Any, n: int) -> torch.Tensor:
        """:meth:`manual_step` for gradients already computed (dense ones in ``.grad``, the tables' as ``rows``):
        the step through the optimizer's ``update_rows`` (where :meth:`takes_rows`), counted as Lightning counts
        it."""
        opt._on_before_step()
        opt.optimizer.update_rows(rows)
        opt._on_after_step()
        return self._count_loss(loss, n)

    def _count_loss(self, loss: torch.Tensor, n: int) -> torch.Tensor:
        part, acc = loss * n, self._epoch_loss
        acc[0] = part if acc[0] is None else acc[0] + part
        acc[1] += n
        return loss

    def _log_epoch_loss(self) -> None:
        total, n = self._epoch_loss
        if n:
            self.log(f"{self.stage}/epoch_train_loss", total / n, prog_bar=True)
        self._epoch_loss[:] = [None, 0]

    def on_validation_epoch_start(self) -> None:
        self.flush_rows()   # row-wise optimizer: rows brought up to date before validation reads them
        # Validation runs at the end of each training epoch, before any on_train_epoch_end hook: logging here makes the
        # epoch's loss visible to callbacks (the per-epoch progress line, the divergence guard) for that same epoch.
        if not self.trainer.sanity_checking:
            self._log_epoch_loss()

    def on_train_epoch_end(self) -> None:
        self.flush_rows()
        self._log_epoch_loss()   # epochs without a validation pass

    def on_fit_end(self) -> None:
        """Give the model back with dense embedding gradients (later stages, export and callers expect them)."""
        self.flush_rows()
        if self._rowwise is not None:
            self._rowwise.detach()
            self._rowwise = None
        for m in self._sparse_modules:
            m.sparse = False
        self._sparse_modules = []


# The hooks Lightning's manual_backward and LightningOptimizer.step call (the batch hooks come from the loop, around
# each training_step call, either way)
INNER_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


def lean_steps(task: L.LightningModule) -> bool:
    """Whether ``task``'s optimizer steps may call ``loss.backward()`` and the optimizer directly: one process on
    one device (Lightning's ``SingleDeviceStrategy``), full precision (the plain ``Precision`` plugin), no profiler,
    and neither a callback nor the module overriding a hook of those wrappers (:data:`INNER_STEP_HOOKS`): then they
    would only call hooks that do nothing.

    Why: their wrappers (strategy, precision plugin, closure, hook dispatch) took ~8 % of a NeuMF training step at
    batch 256 (py-spy of the project's stage on ml-1m-loo, 2 threads), where a step takes ~3-4 ms; one-epoch runs of
    that stage, alternating: 69.1 and 75.4 s without them, 73.0 and 82.6 s with them (the same HR@10)."""
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.plugins.precision import Precision
    from lightning.pytorch.profilers import PassThroughProfiler
    from lightning.pytorch.strategies import SingleDeviceStrategy

    from recsys.tasks.fit import overrides

    t = task.trainer
    hooked = any(overrides(cb, Callback, INNER_STEP_HOOKS) for cb in t.callbacks) \
        or overrides(task, L.LightningModule, INNER_STEP_HOOKS)
    return (type(t.strategy) is SingleDeviceStrategy and type(t.precision_plugin) is Precision
            and isinstance(t.profiler, PassThroughProfiler) and not hooked and not task.automatic_optimization)


class TaskFamily:
    """Interface of a task family; see ``recsys.tasks.ranking.RankingFamily`` for the reference implementation."""

    name = ""
    monitor = "val_hr_at_10"   # validation metric (logged as <stage>/epoch_<monitor>) that selects the best epoch

    def check(self, cfg: dict[str, Any]) -> list[str]:
        """Problems with this model/data pairing, before any I/O (e.g. a session model on data without order)."""
        return []

    def load_data(self, cfg: Any) -> Any:
        raise NotImplementedError

    def data_summary(self, data: Any) -> tuple[dict[str, str], dict[str, float]]:
        """(tags, metrics) describing the data: name, checksum, sizes."""
        raise NotImplementedError

    def model_spec(self, model_cfg: dict[str, Any], data: Any) -> dict[str, Any]:
        """Constructor spec (``_target_`` + kwargs) of the configured model with data sizes filled in."""
        raise NotImplementedError

    def pretrain(self, model: nn.Module, cfg: Any, data: Any, dense_of: Any) -> tuple[dict[str, float], dict[str, Any]]:
        """Initialise a fresh dense model before its training (default: nothing). ``dense_of(sub_cfg)`` returns the
        (cached) trained dense model of another model config on the same data. Returns (figures, train kwargs)."""
        return {}, {}

    def make_task(self, model: nn.Module, cfg: Any, stage: str, lr: float, optimizer: str) -> L.LightningModule:
        raise NotImplementedError

    def make_datamodule(self, data: Any, cfg: Any, data_fraction: float = 1.0) -> L.LightningDataModule:
        raise NotImplementedError

    def samples_per_epoch(self, data: Any, cfg: Any, data_fraction: float = 1.0) -> float:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, data: Any, cfg: Any) -> dict[str, float]:
        raise NotImplementedError

    def example_inputs(self, data: Any, n: int = 4096) -> tuple[torch.Tensor, ...]:
        """Inputs for ``model.score(*inputs)`` used to check that a reloaded artifact scores identically."""
        raise NotImplementedError

    def latency(self, model: nn.Module, data: Any, cfg: Any) -> dict[str, float]:
        raise NotImplementedError


def get_family(task: str) -> TaskFamily:
    """The family named by ``model.task`` (``ranking``, ``ctr``, ``session``)."""
    try:
        mod = importlib.import_module(f"recsys.tasks.{task}")
    except ModuleNotFoundError as e:
        raise ValueError(f"model.task={task!r}: no module recsys.tasks.{task}") from e
    return mod.FAMILY


def model_kwargs(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The model config without keys that are not constructor arguments (name, task, pretrain*)."""
    return {k: v for k, v in model_cfg.items() if k not in MODEL_META_KEYS and not k.startswith("pretrain")}
