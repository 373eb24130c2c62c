"""Row-wise (sparse) embedding updates: embedding tables get sparse gradients and ``torch.optim.SparseAdam``, every
other parameter dense Adam, behind one ``torch.optim.Optimizer`` so Lightning sees a single optimizer.

Why: with dense ``nn.Embedding`` gradients and ``torch.optim.Adam`` every step writes a table-sized zero gradient and
runs Adam's element-wise math over EVERY row of every table, although a batch touches only its own rows. A py-spy
profile of NeuMF (ml-1m, batch 256) had ~55 % of the time in Adam's per-tensor loops and ~30 % in backward (dense
embedding gradients); the cost followed table size, not batch size. With sparse gradients both become proportional
to the rows in the batch.

Semantic difference from dense Adam ("lazy Adam"): a row absent from a batch is not touched at all. Dense Adam decays
that row's moments (m *= beta1, v *= beta2) and still moves the row by lr * m_hat / (sqrt(v_hat) + eps) on every step
(momentum carries it); SparseAdam leaves the row's weights and moments frozen until the row appears again, and its bias
correction uses the step count of the whole table, not of the row. SparseAdam also adds eps to sqrt(v) before the
bias correction (dense Adam after it), a ~1e-3 relative difference on early steps. Rows seen in every step otherwise
get the same updates.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from recsys.nn.kernels import AHEAD, kernel, prefetch_row
from recsys.nn.step import DirectStep, run_update

SPARSE_CHOICES = ("auto", "true", "false", "rowwise", "rowwise_lazy", "scatter")
# true: torch's SparseAdam (lazy) on the tables; rowwise: recsys.tasks.rowwise_adam.RowwiseAdam, dense Adam's math
# touching only batch rows; rowwise_lazy: the same kernel without the catch-up (lazy Adam, for comparison); scatter:
# dense Adam over every row, its table gradients scattered from the batch rows into kept buffers (ScatterAdam).


def sparse_embeddings(model: nn.Module) -> list[nn.Embedding]:
    """Plain ``nn.Embedding`` modules whose weight is a trainable leaf parameter (not pruned, not parametrized,
    not a quantized subclass): the ones that can produce sparse gradients safely."""
    out = []
    for m in model.modules():
        if type(m) is not nn.Embedding or parametrize.is_parametrized(m):
            continue
        w = m._parameters.get("weight")
        if isinstance(w, nn.Parameter) and w.requires_grad and m.max_norm is None:
            out.append(m)
    return out


def resolve_sparse(setting: Any, optimizer: str, weight_decay: float, model: nn.Module) -> str:
    """``train.sparse`` -> the embedding-update path: "" (dense, every row), "sparse" (SparseAdam / sparse SGD),
    "rowwise" or "rowwise_lazy" (:class:`~recsys.tasks.rowwise_adam.RowwiseAdam`).

    ``auto``: ``rowwise`` for Adam without weight decay, ``sparse`` for plain SGD (sparse and dense SGD are the same
    math: a row without gradient does not move), when the model has plain embedding tables; otherwise dense.
    ``true`` / ``rowwise`` / ``rowwise_lazy`` / ``scatter`` insist (and say why they cannot when they cannot);
    ``false``: dense."""
    s = str(setting).lower() if setting is not None else "false"
    if s not in SPARSE_CHOICES:
        raise ValueError(f"train.sparse={setting!r} is not one of {list(SPARSE_CHOICES)}")
    if s == "false":
        return ""
    allowed = ("adam", "sgd") if s in ("auto", "true") else ("adam",)   # scatter, rowwise*: Adam only
    ok = optimizer in allowed and not weight_decay and bool(sparse_embeddings(model))
    if s != "auto" and not ok:
        raise ValueError(f"train.sparse={s} needs train.optimizer={' or '.join(allowed)} (got {optimizer!r}), "
                         f"train.weight_decay=0 (got {weight_decay}) and a model with plain nn.Embedding tables; "
                         "use train.sparse=auto")
    if not ok:
        return ""
    if s == "auto":
        return "rowwise" if optimizer == "adam" else "sparse"
    return "sparse" if s == "true" else s


@kernel
def _scatter_rows(idx, vals, buf, zero):   # pragma: no cover (compiled)
    """``buf[idx[j]] += vals[j]`` for j in order (duplicates summed in the order torch's dense embedding backward
    sums them); with ``zero``, ``buf[idx] = 0`` instead (``vals`` unread)."""
    d = buf.shape[1]
    for j in range(idx.size):
        if j + AHEAD < idx.size:
            prefetch_row(buf, idx[j + AHEAD])
        i = idx[j]
        if zero:
            for c in range(d):
                buf[i, c] = 0.0
        else:
            for c in range(d):
                buf[i, c] += vals[j, c]


class ScatterAdam(DirectStep, torch.optim.Optimizer):
    """Dense Adam (torch's fused kernel over every row of every parameter, :func:`fused_adam`) whose embedding-table
    gradients are built in kept buffers from the tables' sparse gradients (``nn.Embedding(sparse=True)``): each step
    zeroes the rows the previous step wrote and adds the batch's rows in. The steps are dense Adam's, bit for bit.

    Why: where a batch touches a large share of the rows (ML-1M at batch 2048: ~40 %), updating only those rows
    (:class:`~recsys.tasks.rowwise_adam.RowwiseAdam`) saves little, yet torch's dense path also allocates a table-sized
    gradient each step, zero-fills it (``fill_``) and scatters into it (``embedding_dense_backward``): together ~25 %
    of a NeuMF step at ML-1M b2048 (torch.profiler). The kept buffers skip the allocation and the table-wide fill;
    the two numba kernels write only the batch's rows (prefetching ahead, as the row-wise kernels). NeuMF f=32 MLP
    128-64-32, ml-1m size, batch 2048, 2 threads, against dense fused Adam: a bare step 4-18 % faster in four
    interleaved comparisons in one process (without prefetch, 0-6 %); epochs of the project's training stage on
    ml-1m-loo, alternating runs, 21.4 vs 22.5 s on average over four (noisy machine), the same HR@10."""

    def __init__(self, tables: list[torch.nn.Parameter], dense: list[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        tables, dense = list(tables), list(dense)
        for p in tables:
            if p.device.type != "cpu" or p.dim() != 2:
                raise ValueError(f"ScatterAdam needs 2-D CPU tables, got {tuple(p.shape)} on {p.device}")
        super().__init__(tables + dense, {"lr": lr, "betas": betas, "eps": eps})
        self.tables = tables
        self.inner = fused_adam(tables + dense, lr=lr, betas=betas, eps=eps)
        self.param_groups = self.inner.param_groups
        self._bufs = {id(p): torch.zeros_like(p) for p in tables}
        self._written: list[tuple[np.ndarray, np.ndarray]] = []   # (row ids, buffer) the last step wrote
        for dtype in {p.dtype for p in tables}:   # compile (or load from numba's cache) now, not in the first step
            b = torch.zeros(2, 1, dtype=dtype).numpy()
            for zero in (False, True):
                _scatter_rows(np.zeros(1, np.int64), b[:1], b, zero)

    @torch.no_grad()
    def update(self) -> None:
        rows = []
        for p in self.tables:
            g = p.grad
            if g is None or not g.is_sparse:   # no lookup this step (Adam still moves the rows) or a dense gradient
                continue
            rows.append((p, g._indices()[0], g._values()))
        self.update_rows(rows)

    @torch.no_grad()
    def update_rows(self, rows: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """One step with the tables' gradients given as ``(table, row ids, gradient rows)`` (a repeated id's rows
        summed in order), e.g. by a model's hand-written gradient (``NeuMF.bce_gradients``); the other parameters'
        ``.grad`` as they are. A table not listed keeps its ``.grad``."""
        for idx, buf in self._written:
            _scatter_rows(idx, buf, buf, True)
        self._written = []
        for p, ids, vals in rows:
            buf = self._bufs[id(p)]
            idx, b = ids.numpy(), buf.numpy()
            _scatter_rows(idx, vals.contiguous().numpy(), b, False)
            self._written.append((idx, b))
            p.grad = buf
        run_update(self.inner)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict)


class SparseDenseAdam(DirectStep, torch.optim.Optimizer):
    """SparseAdam over the given embedding weights + Adam over the rest, stepped together (see the module docstring
    for the lazy-moment semantics). ``param_groups`` are the inner optimizers' groups, so lr changes reach both."""

    def __init__(self, sparse_params: Iterable[torch.Tensor], dense_params: Iterable[torch.Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        sparse_params, dense_params = list(sparse_params), list(dense_params)
        super().__init__(sparse_params + dense_params, {"lr": lr, "betas": betas, "eps": eps})
        self.inner: list[torch.optim.Optimizer] = []
        if sparse_params:
            self.inner.append(torch.optim.SparseAdam(sparse_params, lr=lr, betas=betas, eps=eps))
        if dense_params:
            self.inner.append(fused_adam(dense_params, lr=lr, betas=betas, eps=eps))
        self.param_groups = [g for o in self.inner for g in o.param_groups]

    @torch.no_grad()
    def update(self) -> None:
        for o in self.inner:
            run_update(o)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.inner:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"inner": [o.state_dict() for o in self.inner]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for o, s in zip(self.inner, state_dict["inner"]):
            o.load_state_dict(s)


def fused_adam(params: Iterable[torch.Tensor], **kw: Any) -> torch.optim.Adam:
    """``torch.optim.Adam(fused=True)``: one fused kernel per tensor, the same math as torch's CPU default.

    Why: torch picks the single-tensor for-loop Adam on CPU (foreach/fused are defaults only on CUDA), ~5 element-wise
    passes over every parameter per step; with NeuMF's dense embedding tables that was 55 % of the step at batch 256
    (py-spy) and 76 % (torch.profiler: sqrt, addcdiv_, div, lerp_, mul_, addcmul_). Interleaved in one process on
    ml-1m-loo (experiments/sparse_step_ratio.py, 1 thread, loaded machine) fused steps were 2.1-2.2x faster at batch
    256 and 1.4-1.6x at 2048; foreach was 1.1x at 256 and 0.8x at 2048."""
    return LeanFusedAdam(params, fused=True, **kw)


class LeanFusedAdam(DirectStep, torch.optim.Adam):
    """torch's fused CPU Adam with the per-step Python trimmed: once every parameter has its state, ``update`` calls
    torch's own kernels (``_foreach_add_`` on the step counts, ``_fused_adam_``) on cached state lists, and
    ``zero_grad`` sets gradients to None directly. The first step, and any setting this path does not cover (several
    param groups, amsgrad, a tensor lr, a non-CPU or mixed-dtype parameter), go through ``torch.optim.Adam.step``.

    Why: at batch 256 ``Adam.step``'s Python (param-group walk, ``_init_group``, dynamo guards, device grouping) and
    ``zero_grad`` took ~8 % of a NeuMF training step (py-spy of the harness, row-wise tables, MLP on this optimizer),
    several times the fused kernel itself."""

    _lean: tuple | None = None   # (params list object, exp_avgs, exp_avg_sqs, steps); reset by load_state_dict

    def _lean_lists(self) -> tuple | None:
        if len(self.param_groups) != 1:
            return None
        g = self.param_groups[0]
        ps = g["params"]
        if g.get("amsgrad") or g.get("maximize") or g.get("capturable") or g.get("differentiable") or \
                g.get("decoupled_weight_decay") or isinstance(g["lr"], torch.Tensor) or not g.get("fused") or \
                any(p.device.type != "cpu" or p.dtype != ps[0].dtype or p not in self.state for p in ps):
            return None
        st = [self.state[p] for p in ps]
        return (ps, list(ps), [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st], [s["step"] for s in st])

    @torch.no_grad()
    def update(self) -> None:
        lean = self._lean
        if lean is None or len(self.param_groups) != 1 or self.param_groups[0]["params"] is not lean[0] or \
                len(lean[0]) != len(lean[1]):
            torch.optim.Adam.step(self)
            self._lean = self._lean_lists()
            return
        _, ps, ms, vs, steps = lean
        grads = [p.grad for p in ps]
        if any(gr is None for gr in grads):   # a parameter without gradient this step: torch's path skips it
            torch.optim.Adam.step(self)
            return
        g = self.param_groups[0]
        b1, b2 = g["betas"]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(ps, grads, ms, vs, [], steps, amsgrad=False, lr=g["lr"], beta1=b1, beta2=b2,
                           weight_decay=g["weight_decay"], eps=g["eps"], maximize=False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            return super().zero_grad(set_to_none=False)
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._lean = None   # the state tensors are replaced
        super().load_state_dict(state_dict)


def build_sparse_adam(model: nn.Module, lr: float, optimizer: str = "adam", mode: str = "sparse"
                      ) -> tuple[torch.optim.Optimizer, list[nn.Embedding]]:
    """Switch the model's plain embedding tables to sparse gradients and return (optimizer, the switched modules).
    ``mode``: "sparse" (SparseAdam / SGD), "rowwise" / "rowwise_lazy" (RowwiseAdam, hooked on the tables) or
    "scatter" (ScatterAdam: dense Adam, table gradients built from the sparse ones)."""
    embs = sparse_embeddings(model)
    tables = [m.weight for m in embs]
    ids = {id(p) for p in tables}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    if mode in ("rowwise", "rowwise_lazy") and optimizer == "adam":
        from recsys.tasks.rowwise_adam import RowwiseAdam

        opt = RowwiseAdam(tables, dense, lr=lr, catch_up=mode == "rowwise")
        opt.attach(embs)
        return opt, embs
    for m in embs:
        m.sparse = True
    if optimizer == "sgd":   # torch SGD without momentum/decay accepts sparse gradients: only batch rows are written
        return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr), embs
    if mode == "scatter" and optimizer == "adam":
        return ScatterAdam(tables, dense, lr=lr), embs
    return SparseDenseAdam(tables, dense, lr=lr), embs
