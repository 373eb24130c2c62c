"""Row-wise Adam for embedding tables (``train.sparse=rowwise``): each step reads and writes only the rows in the batch,
yet trains like dense Adam.

Why (written here rather than taken from torch): torch's dense Adam zero-fills a table-sized gradient and runs Adam
over every row each step (torch.profiler, NeuMF ml-1m b256 with fused Adam: fill_ 21 %, the fused Adam kernel 18 % +
its Python 9 %, embedding backward 29 %); torch's ``SparseAdam`` coalesces a sparse gradient and is "lazy": a row
absent from a batch keeps its weights and moments frozen, which lost 1.4 pt HR@10 on ml-1m-loo.

The per-row work is two numba kernels that update the batch's rows in place (no gather / scatter copies, no
``torch.unique``): torch's index_copy_ / index_select / unique on CPU cost more than the dense pass they replace
(torch.profiler, NeuMF ml-1m b2048: index_copy_ 18 %, index_select 9 % of a step).

Dense-equivalent catch-up (``catch_up=True``, the default): under dense Adam a row with zero gradient for k steps has
its moments decay (m *= b1^k, v *= b2^k) and still moves on each of those steps by
``lr * m_s/(1-b1^s) / (sqrt(v_s/(1-b2^s)) + eps)``. With eps small against sqrt(v) that is
``lr * m/sqrt(v) * r^(s-t0) * c(s)`` with ``r = b1/sqrt(b2)`` and ``c(s) = sqrt(1-b2^s)/(1-b1^s)``: the sum over the
skipped steps is ``lr * m/sqrt(v) * F(t0, T)``, ``F(t0, T) = A(t0) - r^(T-1-t0) A(T-1)`` with the step-only series
``A(t) = sum_{j>=1} r^j c(t+j)`` (precomputed in float64). So a row is brought up to date only when it is next read
(in a batch, or by :meth:`RowwiseAdam.flush` before validation / saving), with the same moments and weights as dense
Adam up to the eps term. ``catch_up=False`` is lazy Adam (SparseAdam's semantics, bias correction by the global step).

The catch-up before a lookup writes only the weights: the moments' decay over the skipped steps (``b1^k``, ``b2^k``)
is applied where the row's moments are next written anyway (its Adam step right after, or a flush), from the step
they were last settled at (``settled``); until then a weight move scales ``m/sqrt(v)`` by ``r^(last - settled)``.
Leaving the moment rows unwritten took a further ~25 % off a catch-up of 2,048 random rows of a 138,493 x 64 table
(one thread, 436 -> 308 us).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from recsys.nn.kernels import AHEAD, kernel, prefetch_row
from recsys.nn.step import DirectStep, run_update
from recsys.tasks.optim import fused_adam


class _StepSeries:
    """Per step count t = 0, 1, ... (float64, grown on demand; see module docstring): column 0 ``A(t) = sum_{j>=1}
    r^j c(t+j)``, columns 1-3 the powers ``r^t``, ``b1^t``, ``b2^t`` a catch-up of t skipped steps needs. Tabled
    rather than ``**`` in the kernel: three float64 pow calls per row were up to 65 % of a catch-up (2,048 random rows
    of a 138,493 x 32 float32 table, one thread: 589 -> 208 us a call)."""

    TAIL = 600   # r^600 < 1e-27: terms past this horizon do not reach float64 precision of A

    def __init__(self, b1: float, b2: float) -> None:
        self.b1, self.b2, self.r = b1, b2, b1 / math.sqrt(b2)
        self.values = np.zeros((0, 4), dtype=np.float64)

    def upto(self, t: int) -> np.ndarray:
        """The (n, 4) table with at least ``t + 1`` rows."""
        n = len(self.values)
        if t < n:
            return self.values
        size = max(2 * n, t + 1, 4096)
        s = np.arange(1, size + self.TAIL + 1, dtype=np.float64)
        c = np.sqrt(1.0 - self.b2 ** s) / (1.0 - self.b1 ** s)    # c[i] = c(i + 1)
        a = np.zeros(size + self.TAIL + 1)
        for i in range(size + self.TAIL - 1, -1, -1):           # A(i) = r (c(i+1) + A(i+1)); A beyond the tail ~ 0
            a[i] = self.r * (c[i] + a[i + 1])
        k = np.arange(size, dtype=np.float64)
        self.values = np.ascontiguousarray(np.stack([a[:size], self.r ** k, self.b1 ** k, self.b2 ** k], axis=1))
        return self.values


# Compile flags (recsys.nn.kernels) vectorise the loops; measured per call, ML-1M user table (6,040 x 64), batch
# 2048, one process: catch-up 554 -> 92-131 us, the Adam step (was gather + torch fused Adam + scatter) 484 -> 138-194 us.


@kernel
def _catch_up_rows(idx, p, m, v, last, settled, upto, lr, series, settle):   # pragma: no cover (compiled)
    """Rows in ``idx`` whose weights were last brought up to date at step ``last[i] < upto``: dense Adam's moves of
    the steps last[i]+1..upto, in place; each row once (``last`` is set to ``upto``). The stored moments are dense
    Adam's at step ``settled[i]``; with ``settle`` they are also decayed to ``upto`` (and ``settled`` set), else left
    for the row's next Adam step. ``series``: the :class:`_StepSeries` table."""
    d = p.shape[1]
    a_upto = series[upto, 0]
    cf = np.empty(4, dtype=p.dtype)
    cf[3] = 1e-30   # v = 0 only where m = 0 (a row never seen): + 1e-30 keeps that 0 / 0 out
    tiny = cf[3]
    for j in range(idx.size):
        if j + AHEAD < idx.size:
            q = idx[j + AHEAD]
            prefetch_row(p, q)
            prefetch_row(m, q)
            prefetch_row(v, q)
        i = idx[j]
        s = last[i]
        if s < upto:
            cf[0] = lr * series[s - settled[i], 1] * (series[s, 0] - series[upto - s, 1] * a_upto)
            move = cf[0]
            for c in range(d):
                p[i, c] -= move * m[i, c] / np.sqrt(v[i, c] + tiny)
            last[i] = upto
        if settle and settled[i] < upto:   # a second pass over the row, but only in flush (once an epoch)
            k = upto - settled[i]
            cf[1] = series[k, 2]
            cf[2] = series[k, 3]
            d1, d2 = cf[1], cf[2]
            for c in range(d):
                m[i, c] *= d1
                v[i, c] *= d2
            settled[i] = upto


@kernel
def _adam_rows(idx, vals, pos, rows, gbuf, p, m, v, last, settled, t, lr, b1, b2, eps, series,
               decay):   # pragma: no cover (compiled)
    """Adam step ``t`` (torch's formula: bias-corrected, eps outside the sqrt) on the rows of an uncoalesced sparse
    gradient (``idx[j]`` gets ``vals[j]``), in place; duplicate ids are summed first (into ``gbuf``, in first-seen
    order ``rows``). With ``decay`` a row's moments are first decayed from step ``settled[i]`` to ``t - 1`` (the
    catch-up left them; lazy Adam does not decay). ``pos`` is scratch, all -1 on entry and exit. Returns how many
    distinct rows."""
    d, nr = p.shape[1], 0   # explicit element loops: numba's row-slice assignment ran ~5x slower
    for j in range(idx.size):
        i = idx[j]
        s = pos[i]
        if s < 0:
            s = nr
            pos[i] = s
            rows[s] = i
            nr += 1
            for c in range(d):
                gbuf[s, c] = vals[j, c]
        else:
            for c in range(d):
                gbuf[s, c] += vals[j, c]
    cf = np.empty(7, dtype=p.dtype)
    cf[0] = lr / (1.0 - b1 ** t)
    cf[1] = math.sqrt(1.0 - b2 ** t)
    cf[4], cf[5], cf[6] = 1.0 - b1, 1.0 - b2, eps
    step, bc2, o1, o2, e = cf[0], cf[1], cf[4], cf[5], cf[6]
    for s in range(nr):
        if s + AHEAD < nr:
            q = rows[s + AHEAD]
            prefetch_row(p, q)
            prefetch_row(m, q)
            prefetch_row(v, q)
        i = rows[s]
        pos[i] = -1
        k = t - 1 - settled[i] if decay else 0
        cf[2] = b1 * series[k, 2]
        cf[3] = b2 * series[k, 3]
        fb1, fb2 = cf[2], cf[3]
        for c in range(d):
            g = gbuf[s, c]
            mc = fb1 * m[i, c] + o1 * g
            vc = fb2 * v[i, c] + o2 * g * g
            m[i, c] = mc
            v[i, c] = vc
            p[i, c] -= step * mc / (np.sqrt(vc) / bc2 + e)
        last[i] = t
        settled[i] = t
    return nr


def _warm_up(dtype: torch.dtype) -> None:
    """Compile (or load from numba's on-disk cache) the kernels for this table dtype and int32 / int64 ids now, when
    the optimizer is built, rather than inside the first training step (and its epoch's timing)."""
    f = np.dtype(str(dtype).replace("torch.", ""))
    p, m, v = np.zeros((2, 1), f), np.zeros((2, 1), f), np.zeros((2, 1), f)
    last, settled, rows, a = np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros((4, 4))
    pos = np.full(2, -1, np.int64)
    for ids in (np.zeros(1, np.int64), np.zeros(1, np.int32)):
        _catch_up_rows(ids, p, m, v, last, settled, 1, 0.0, a, False)
        _adam_rows(ids, np.zeros((1, 1), f), pos, rows, np.zeros((2, 1), f), p, m, v, last, settled, 1, 0.0, 0.9,
                   0.999, 1e-8, a, True)


def _np(x: torch.Tensor) -> np.ndarray:
    """The tensor's memory as a numpy array (no copy)."""
    return x.detach().numpy()


class RowwiseAdam(DirectStep, torch.optim.Optimizer):
    """Adam over embedding tables touching only the rows of the batch + fused dense Adam for the other parameters.

    Tables get sparse gradients (``nn.Embedding(sparse=True)``); :meth:`attach` adds a forward pre-hook per table
    that brings the rows about to be read up to date (catch-up) before a training lookup; :meth:`step` applies Adam
    to the rows of each sparse gradient. ``param_groups`` are [tables' group, dense groups], so lr changes reach both.
    """

    def __init__(self, tables: list[torch.nn.Parameter], dense: list[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, catch_up: bool = True) -> None:
        tables, dense = list(tables), list(dense)
        super().__init__(tables + dense, {"lr": lr, "betas": betas, "eps": eps})
        self.tables, self.catch_up, self.t = tables, bool(catch_up), 0
        self.dense = fused_adam(dense, lr=lr, betas=betas, eps=eps) if dense else None
        self.param_groups = [{"params": tables, "lr": lr, "betas": betas, "eps": eps}] + \
            (self.dense.param_groups if self.dense else [])
        for p in tables:   # allocated up front: moments (n, d) each, step each row was last brought up to date
            if p.device.type != "cpu" or p.dtype not in (torch.float32, torch.float64) or p.dim() != 2:
                raise ValueError(f"RowwiseAdam needs 2-D float CPU tables, got {tuple(p.shape)} {p.dtype} {p.device}")
            self.state[p] = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p),
                             "last": torch.zeros(p.shape[0], dtype=torch.int64)}
        self._pos = {id(p): np.full(p.shape[0], -1, dtype=np.int64) for p in tables}   # kernel scratch
        # per row, the step its stored moments are dense Adam's at (<= "last"; equal after flush, so not saved)
        self._settled = {id(p): np.zeros(p.shape[0], dtype=np.int64) for p in tables}
        self._np_views: dict[int, tuple] = {}
        self._scratch: dict[int, tuple] = {}
        for dtype in {p.dtype for p in tables}:
            _warm_up(dtype)
        self._series = _StepSeries(*betas)
        self._hooks: list = []

    def attach(self, modules: list[torch.nn.Embedding]) -> None:
        """Sparse gradients for these tables' modules, and (catch-up) the pre-forward hook that brings rows up to
        date before a training lookup reads them."""
        mine = {id(p) for p in self.tables}
        for mod in modules:
            if id(mod.weight) not in mine:
                raise ValueError(f"{mod} is not one of this optimizer's tables")
            mod.sparse = True
            if self.catch_up:
                self._hooks.append(mod.register_forward_pre_hook(self._pre_forward))

    def detach(self) -> None:
        """Remove the hooks (after training)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _pre_forward(self, module: torch.nn.Embedding, args: tuple) -> None:
        if torch.is_grad_enabled() and module.training:
            p = module.weight
            self._catch_up(args[0].reshape(-1), p, self.t)

    def _views(self, p: torch.Tensor) -> tuple[np.ndarray, ...]:
        """numpy views (no copy) of a table and its state, made once: per-call conversions cost more than the
        kernels at batch 256 (torch.profiler: 178 detach calls per step)."""
        key = id(p)
        got = self._np_views.get(key)
        if got is None or got[0] != p.data_ptr():
            st = self.state[p]
            got = (p.data_ptr(), _np(p), _np(st["exp_avg"]), _np(st["exp_avg_sq"]), _np(st["last"]),
                   self._settled[key])
            self._np_views[key] = got
        return got[1:]

    def _buffers(self, p: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Scratch of at least ``n`` rows for one table (distinct row ids, their summed gradients), grown when a batch
        is larger."""
        got = self._scratch.get(id(p))
        if got is None or len(got[0]) < n:
            got = (np.empty(n, dtype=np.int64), np.empty((n, p.shape[1]), dtype=_np(p).dtype))
            self._scratch[id(p)] = got
        return got

    def _catch_up(self, idx: torch.Tensor, p: torch.Tensor, upto: int, settle: bool = False) -> None:
        g = self.param_groups[0]
        _catch_up_rows(_np(idx), *self._views(p), upto, g["lr"], self._series.upto(upto), settle)

    @torch.no_grad()
    def update(self) -> None:
        if self.dense is not None:
            run_update(self.dense)
        self.t += 1
        t, g = self.t, self.param_groups[0]
        lr, (b1, b2), eps = g["lr"], g["betas"], g["eps"]
        series = self._series.upto(t)
        for p in self.tables:
            if p.grad is None:
                continue
            if not p.grad.is_sparse:
                raise RuntimeError("RowwiseAdam needs sparse embedding gradients (nn.Embedding(sparse=True))")
            idx, vals = p.grad._indices()[0], p.grad._values()
            if self.catch_up and not self._hooks:   # rows not yet caught up by a pre-forward hook
                self._catch_up(idx, p, t - 1)
            if len(idx):   # one kernel per table: sum duplicate rows, Adam in place on the rows
                rows, gbuf = self._buffers(p, len(idx))
                _adam_rows(_np(idx), _np(vals.contiguous()), self._pos[id(p)], rows, gbuf, *self._views(p), t, lr,
                           b1, b2, eps, series, self.catch_up)

    @torch.no_grad()
    def flush(self) -> None:
        """Bring every row up to the current step (dense Adam's weights and moments), e.g. before validation or
        saving; a table-sized pass, so once per epoch, not per step."""
        if not self.catch_up or self.t == 0:
            return
        for p in self.tables:
            self._catch_up(torch.arange(p.shape[0]), p, self.t, settle=True)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.tables:
            p.grad = None
        if self.dense is not None:
            self.dense.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """Tables' moments, last-update steps and the step count (after :meth:`flush`), plus the dense Adam's."""
        self.flush()
        return {"t": self.t, "catch_up": self.catch_up, "lr": self.param_groups[0]["lr"],
                "tables": [{k: v.clone() for k, v in self.state[p].items()} for p in self.tables],
                "dense": self.dense.state_dict() if self.dense else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if len(state_dict["tables"]) != len(self.tables):
            raise ValueError(f"RowwiseAdam state has {len(state_dict['tables'])} tables, this optimizer "
                             f"{len(self.tables)}")
        self.t, self.catch_up = int(state_dict["t"]), bool(state_dict["catch_up"])
        self.param_groups[0]["lr"] = state_dict["lr"]
        for p, s in zip(self.tables, state_dict["tables"]):
            for k, v in s.items():
                self.state[p][k].copy_(v)
            self._settled[id(p)][:] = _np(self.state[p]["last"])   # saved states are flushed: moments settled
        if self.dense is not None:
            self.dense.load_state_dict(state_dict["dense"])
