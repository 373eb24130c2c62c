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
"""
from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
import torch


class _StepSeries:
    """``A(t) = sum_{j>=1} r^j c(t+j)`` for t = 0, 1, ... as a float64 tensor, grown on demand (see module docstring)."""

    TAIL = 600   # r^600 < 1e-27: terms past this horizon do not reach float64 precision of A

    def __init__(self, b1: float, b2: float) -> None:
        self.b1, self.b2, self.r = b1, b2, b1 / math.sqrt(b2)
        self.values = torch.zeros(0, dtype=torch.float64)

    def upto(self, t: int) -> torch.Tensor:
        """The series with at least ``t + 1`` entries."""
        n = len(self.values)
        if t < n:
            return self.values
        size = max(2 * n, t + 1, 4096)
        s = np.arange(1, size + self.TAIL + 1, dtype=np.float64)
        c = np.sqrt(1.0 - self.b2 ** s) / (1.0 - self.b1 ** s)    # c[i] = c(i + 1)
        a = np.zeros(size + self.TAIL + 1)
        for i in range(size + self.TAIL - 1, -1, -1):           # A(i) = r (c(i+1) + A(i+1)); A beyond the tail ~ 0
            a[i] = self.r * (c[i] + a[i + 1])
        self.values = torch.from_numpy(a[:size].copy())
        return self.values


@numba.njit(cache=True, nogil=True, fastmath=False)
def _catch_up_rows(idx, p, m, v, last, upto, lr, b1, b2, r, a):   # pragma: no cover (compiled)
    """Rows in ``idx`` last brought up to date at step ``last[i] < upto``: dense Adam's moves and moment decay of
    the steps last[i]+1..upto, in place; each row once (``last`` is set to ``upto``)."""
    d = p.shape[1]
    for j in range(idx.size):
        i = idx[j]
        s = last[i]
        if s >= upto:
            continue
        k = upto - s
        move = lr * (a[s] - r ** k * a[upto])
        d1, d2 = b1 ** k, b2 ** k
        for c in range(d):   # v = 0 only where m = 0 (a row never seen): + 1e-30 keeps that 0 / 0 out
            p[i, c] -= move * m[i, c] / math.sqrt(v[i, c] + 1e-30)
        for c in range(d):
            m[i, c] *= d1
        for c in range(d):
            v[i, c] *= d2
        last[i] = upto


@numba.njit(cache=True, nogil=True)
def _gather_rows(idx, vals, pos, rows, p, m, v, gbuf, wbuf, mbuf, vbuf):   # pragma: no cover (compiled)
    """Unique rows of an uncoalesced sparse gradient (``idx[j]`` gets ``vals[j]``) in first-seen order: their summed
    gradients into ``gbuf`` and copies of their weights / moments into ``wbuf`` / ``mbuf`` / ``vbuf``; returns how
    many. ``pos`` is scratch, all -1 on entry and exit."""
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
            for c in range(d):
                wbuf[s, c] = p[i, c]
            for c in range(d):
                mbuf[s, c] = m[i, c]
            for c in range(d):
                vbuf[s, c] = v[i, c]
        else:
            for c in range(d):
                gbuf[s, c] += vals[j, c]
    for s in range(nr):
        pos[rows[s]] = -1
    return nr


@numba.njit(cache=True, nogil=True)
def _scatter_rows(rows, nr, p, m, v, last, wbuf, mbuf, vbuf, t):   # pragma: no cover (compiled)
    """Write the updated rows back; their ``last`` = t."""
    d = p.shape[1]
    for s in range(nr):
        i = rows[s]
        for c in range(d):
            p[i, c] = wbuf[s, c]
        for c in range(d):
            m[i, c] = mbuf[s, c]
        for c in range(d):
            v[i, c] = vbuf[s, c]
        last[i] = t


def _warm_up(dtype: torch.dtype) -> None:
    """Compile (or load from numba's on-disk cache) the kernels for this table dtype and int32 / int64 ids now, when
    the optimizer is built, rather than inside the first training step (and its epoch's timing)."""
    f = np.dtype(str(dtype).replace("torch.", ""))
    p, m, v = np.zeros((2, 1), f), np.zeros((2, 1), f), np.zeros((2, 1), f)
    last, pos, rows, a = np.zeros(2, np.int64), np.full(2, -1, np.int64), np.zeros(2, np.int64), np.zeros(4)
    bufs = [np.zeros((2, 1), f) for _ in range(4)]
    for ids in (np.zeros(1, np.int64), np.zeros(1, np.int32)):
        _catch_up_rows(ids, p, m, v, last, 1, 0.0, 0.9, 0.999, 0.9, a)
    nr = _gather_rows(np.zeros(1, np.int64), np.zeros((1, 1), f), pos, rows, p, m, v, *bufs)
    _scatter_rows(rows, nr, p, m, v, last, bufs[1], bufs[2], bufs[3], 1)


def _np(x: torch.Tensor) -> np.ndarray:
    """The tensor's memory as a numpy array (no copy)."""
    return x.detach().numpy()


class RowwiseAdam(torch.optim.Optimizer):
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
        self.dense = torch.optim.Adam(dense, lr=lr, betas=betas, eps=eps, fused=True) if dense else None
        self.param_groups = [{"params": tables, "lr": lr, "betas": betas, "eps": eps}] + \
            (self.dense.param_groups if self.dense else [])
        for p in tables:   # allocated up front: moments (n, d) each, step each row was last brought up to date
            if p.device.type != "cpu" or p.dtype not in (torch.float32, torch.float64) or p.dim() != 2:
                raise ValueError(f"RowwiseAdam needs 2-D float CPU tables, got {tuple(p.shape)} {p.dtype} {p.device}")
            self.state[p] = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p),
                             "last": torch.zeros(p.shape[0], dtype=torch.int64)}
        self._pos = {id(p): np.full(p.shape[0], -1, dtype=np.int64) for p in tables}   # kernel scratch
        self._np_views: dict[int, tuple] = {}
        self._scratch: dict[int, tuple] = {}
        self._step_t = torch.zeros((), dtype=torch.float32)
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
            got = (p.data_ptr(), _np(p), _np(st["exp_avg"]), _np(st["exp_avg_sq"]), _np(st["last"]))
            self._np_views[key] = got
        return got[1:]

    def _buffers(self, p: torch.Tensor, n: int) -> tuple[np.ndarray, list[np.ndarray], list[torch.Tensor]]:
        """Scratch of at least ``n`` rows for one table: row ids, and gradient / weight / moment rows (numpy and
        torch views of the same memory), grown when a batch is larger."""
        got = self._scratch.get(id(p))
        if got is None or len(got[0]) < n:
            arrs = [np.empty((n, p.shape[1]), dtype=_np(p).dtype) for _ in range(4)]
            got = (np.empty(n, dtype=np.int64), arrs, [torch.from_numpy(a) for a in arrs])
            self._scratch[id(p)] = got
        return got

    def _catch_up(self, idx: torch.Tensor, p: torch.Tensor, upto: int) -> None:
        g = self.param_groups[0]
        _catch_up_rows(_np(idx), *self._views(p), upto, g["lr"], g["betas"][0], g["betas"][1], self._series.r,
                       self._series.upto(upto).numpy())

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.dense is not None:
            self.dense.step()
        self.t += 1
        t, g = self.t, self.param_groups[0]
        lr, (b1, b2), eps = g["lr"], g["betas"], g["eps"]
        todo = []
        for p in self.tables:
            if p.grad is None:
                continue
            if not p.grad.is_sparse:
                raise RuntimeError("RowwiseAdam needs sparse embedding gradients (nn.Embedding(sparse=True))")
            idx, vals = p.grad._indices()[0], p.grad._values()
            if self.catch_up and not self._hooks:   # rows not yet caught up by a pre-forward hook
                self._catch_up(idx, p, t - 1)
            n = len(idx)
            if n == 0:
                continue
            rows, arrs, tens = self._buffers(p, n)
            pn, mn, vn, _ = self._views(p)
            nr = _gather_rows(_np(idx), _np(vals.contiguous()), self._pos[id(p)], rows, pn, mn, vn, *arrs)
            todo.append((p, rows, nr, arrs, [x[:nr] for x in tens]))
        if todo:   # one fused Adam kernel (torch's, vectorised) over the gathered rows of every table
            g_, w_, m_, v_ = ([b[k] for *_, b in todo] for k in range(4))
            self._step_t.fill_(float(t))
            torch._fused_adam_(w_, g_, m_, v_, [], [self._step_t] * len(w_), lr=lr, beta1=b1, beta2=b2,
                               weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)
            for p, rows, nr, arrs, _ in todo:
                _scatter_rows(rows, nr, *self._views(p), arrs[1], arrs[2], arrs[3], t)
        return loss

    @torch.no_grad()
    def flush(self) -> None:
        """Bring every row up to the current step (dense Adam's weights and moments), e.g. before validation or
        saving; a table-sized pass, so once per epoch, not per step."""
        if not self.catch_up or self.t == 0:
            return
        for p in self.tables:
            self._catch_up(torch.arange(p.shape[0]), p, self.t)

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
        if self.dense is not None:
            self.dense.load_state_dict(state_dict["dense"])
