"""Adagrad with heavy-ball momentum and lazy (row-wise) updates of sparse gradients: GRU4Rec's optimiser.

Hand-written because torch has no equivalent: ``torch.optim.Adagrad`` has no momentum and adds eps outside the square
root; ``torch.optim.SGD(momentum=...)`` has no Adagrad scaling and, on a dense table, keeps moving rows that are not in
the batch. Here a parameter with a sparse gradient (an item table read through ``F.embedding(..., sparse=True)``) has
its accumulator, momentum and weight touched only on the rows present in that step; untouched rows keep their momentum
frozen until they appear again (the semantics of the official GRU4Rec implementation, Hidasi & Karatzoglou 2018).

Per touched element: ``acc += g^2``; ``step = -lr * g / sqrt(acc + eps)`` (eps *inside* the root);
``mom = momentum * mom + step``; ``p += mom`` (``p += step`` when momentum is 0).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from recsys.nn.kernels import kernel
from recsys.nn.step import DirectStep

# The update is written as two numba kernels (one pass over the dense elements / the batch's rows, in place) because
# torch needs 4-6 passes for it (addcmul_, add, sqrt_, addcdiv_ / index_select, index_copy_, div, index_add_), each a
# full read and write of a 1.4M-float tensor at 480 units. Per step at 2 threads (480 units, 1,240 item rows of 480,
# one process, experiments on this machine): dense 1.20 -> 0.88 ms (momentum 0) and 2.32 -> 1.07 ms (momentum 0.2);
# item rows 1.36 -> 0.53 ms and 2.81 -> 0.60 ms. py-spy had the optimizer at ~40 % of a 480-unit GRU4Rec step.
# Compile flags and why: recsys.nn.kernels.


@kernel
def _dense_kernel(p, g, acc, mom, lr, momentum, eps):   # pragma: no cover (compiled)
    """Flat (1-D) views: acc += g^2; step = -lr g / sqrt(acc + eps); mom = momentum mom + step (when mom has
    elements); p += mom or step."""
    cf = np.empty(3, dtype=p.dtype)   # scalars in the parameter's dtype: float32 stays in float32 lanes
    cf[0], cf[1], cf[2] = -lr, momentum, eps
    nlr, mo, e = cf[0], cf[1], cf[2]
    if mom.size:
        for j in range(p.size):
            gj = g[j]
            a = acc[j] + gj * gj
            acc[j] = a
            u = mo * mom[j] + nlr * gj / np.sqrt(a + e)
            mom[j] = u
            p[j] += u
    else:
        for j in range(p.size):
            gj = g[j]
            a = acc[j] + gj * gj
            acc[j] = a
            p[j] += nlr * gj / np.sqrt(a + e)


@kernel
def _rows_kernel(idx, v, p, acc, mom, lr, momentum, eps):   # pragma: no cover (compiled)
    """The dense kernel's update on rows ``idx`` (distinct) of 2-D tables with row gradients ``v``."""
    cf = np.empty(3, dtype=p.dtype)
    cf[0], cf[1], cf[2] = -lr, momentum, eps
    nlr, mo, e = cf[0], cf[1], cf[2]
    d = p.shape[1]
    for r in range(idx.size):
        i = idx[r]
        if mom.size:
            for c in range(d):
                gj = v[r, c]
                a = acc[i, c] + gj * gj
                acc[i, c] = a
                u = mo * mom[i, c] + nlr * gj / np.sqrt(a + e)
                mom[i, c] = u
                p[i, c] += u
        else:
            for c in range(d):
                gj = v[r, c]
                a = acc[i, c] + gj * gj
                acc[i, c] = a
                p[i, c] += nlr * gj / np.sqrt(a + e)


def _warm_up(dtype: torch.dtype) -> None:
    """Compile (or load from numba's cache) both kernels for this dtype now, not inside the first training step."""
    f = np.dtype(str(dtype).replace("torch.", ""))
    one, two = np.zeros(1, f), np.zeros((1, 1), f)
    for mom in (np.zeros(0, f), np.zeros(1, f)):
        _dense_kernel(one, one, one.copy(), mom, 0.0, 0.0, 1.0)
    for mom in (np.zeros((0, 0), f), np.zeros((1, 1), f)):
        _rows_kernel(np.zeros(1, np.int64), two, two.copy(), two.copy(), mom, 0.0, 0.0, 1.0)


def _as_rows(t: torch.Tensor) -> np.ndarray:
    """A contiguous table's memory as a 2-D numpy array of rows (a 1-D table as (n, 1)), no copy."""
    return t.view(len(t), -1).numpy()


def _kernel_ok(*ts: torch.Tensor) -> bool:
    """CPU, float32 / float64, contiguous, one dtype: what the kernels take (numpy views, no copies)."""
    return all(t.device.type == "cpu" and t.dtype == ts[0].dtype and t.is_contiguous() and not t.requires_grad
               for t in ts) and ts[0].dtype in (torch.float32, torch.float64)


class AdagradM(DirectStep, torch.optim.Optimizer):
    """Adagrad (eps inside the sqrt) + heavy-ball momentum on the scaled step; sparse gradients update rows lazily.

    ``kernels=False`` takes torch's element-wise ops instead of the numba kernels (same math; kept to test against)."""

    kernels = True

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 0.05, momentum: float = 0.0,
                 eps: float = 1e-6, weight_decay: float = 0.0) -> None:
        if lr <= 0:
            raise ValueError(f"train.lr={lr!r}: must be > 0 for train.optimizer=adagradm")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"model.momentum={momentum!r}: must be in [0, 1) for train.optimizer=adagradm")
        if eps <= 0:
            raise ValueError(f"adagradm eps={eps!r}: must be > 0")
        if weight_decay:
            raise ValueError(f"train.weight_decay={weight_decay!r}: train.optimizer=adagradm has no weight decay "
                             "(as the official GRU4Rec optimiser); set train.weight_decay=0")
        super().__init__(params, {"lr": lr, "momentum": momentum, "eps": eps})
        self._fits: dict[int, bool] = {}   # id(param) -> whether the kernels take it (_kernels_fit)
        for dtype in {p.dtype for g in self.param_groups for p in g["params"]} & {torch.float32, torch.float64}:
            _warm_up(dtype)

    def _kernels_fit(self, p: torch.Tensor, state: dict) -> bool:
        """:func:`_kernel_ok` of a parameter and its state, checked once (per-step checks were ~1.5 % of a 480-unit
        GRU4Rec step: py-spy); forgotten when a state is loaded."""
        ok = self._fits.get(id(p))
        if ok is None:
            ok = self._fits[id(p)] = _kernel_ok(p.data, state["acc"], *([state["mom"]] if "mom" in state else []))
        return ok

    def load_state_dict(self, state_dict: dict) -> None:
        self._fits = {}
        super().load_state_dict(state_dict)

    def _state(self, p: torch.Tensor, mom: float) -> dict:
        state = self.state[p]
        if not state:
            state["acc"] = torch.zeros_like(p)
            if mom > 0:
                state["mom"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def update(self) -> None:
        """One step (``step(closure)`` runs the closure first: :class:`~recsys.nn.step.DirectStep`)."""
        for group in self.param_groups:
            lr, mom, eps = group["lr"], group["momentum"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    idx, v = g._indices()[0], g._values()
                    if len(idx) > 1 and not bool((idx[1:] > idx[:-1]).all()):   # not rows in ascending order, once
                        g = g.coalesce()   # each (autograd drops the coalesced flag of GRU4Rec's row gradients)
                        idx, v = g.indices()[0], g.values()
                    self._update_rows(p, idx, v, lr, mom, eps)
                else:
                    self._update_dense(p, g, lr, mom, eps)

    @torch.no_grad()
    def update_rows(self, rows: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """One step with the tables' gradients given as ``(table, row ids, gradient rows)``, the ids distinct (as
        a coalesced sparse gradient's), e.g. by ``GRU4Rec.xe_gradients``; the other parameters' ``.grad`` as they
        are. Same update as :meth:`update` with those rows as sparse gradients; a listed table's ``.grad`` is not
        read."""
        listed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {id(p): (i, v) for p, i, v in rows}
        for group in self.param_groups:
            lr, mom, eps = group["lr"], group["momentum"], group["eps"]
            for p in group["params"]:
                if id(p) in listed:
                    self._update_rows(p, *listed[id(p)], lr, mom, eps)
                elif p.grad is not None:
                    if p.grad.is_sparse:
                        raise ValueError("AdagradM.update_rows: a sparse .grad on a parameter not listed in rows")
                    self._update_dense(p, p.grad, lr, mom, eps)

    def _update_rows(self, p: torch.Tensor, idx: torch.Tensor, v: torch.Tensor, lr: float, mom: float,
                     eps: float) -> None:
        """Rows ``idx`` (distinct) of ``p`` with gradient rows ``v``: accumulator, momentum and weight of those rows
        only."""
        state = self._state(p, mom)
        if self.kernels and p.dim() <= 2 and self._kernels_fit(p, state):
            # a 1-D table (GRU4Rec's item bias) as (n, 1) rows: the same kernel instead of ~8 torch ops
            # (py-spy, 480 units: the torch path of the bias was ~4 % of a step)
            m = _as_rows(state["mom"]) if mom > 0 else torch.empty(0, 0, dtype=p.dtype).numpy()
            _rows_kernel(idx.numpy(), _as_rows(v.detach().contiguous()), _as_rows(p.data),
                         _as_rows(state["acc"]), m, lr, mom, eps)
            return
        acc = state["acc"].index_select(0, idx).addcmul_(v, v)
        state["acc"].index_copy_(0, idx, acc)
        upd = v.div(acc.add_(eps).sqrt_()).mul_(-lr)
        if mom > 0:
            upd = state["mom"].index_select(0, idx).mul_(mom).add_(upd)
            state["mom"].index_copy_(0, idx, upd)
        p.index_add_(0, idx, upd)

    def _update_dense(self, p: torch.Tensor, g: torch.Tensor, lr: float, mom: float, eps: float) -> None:
        state = self._state(p, mom)
        if self.kernels and self._kernels_fit(p, state) and g.is_contiguous() and g.dtype == p.dtype:
            m = state["mom"] if mom > 0 else torch.empty(0, dtype=p.dtype)
            _dense_kernel(p.data.view(-1).numpy(), g.view(-1).numpy(), state["acc"].view(-1).numpy(),
                          m.view(-1).numpy(), lr, mom, eps)
            return
        # the root goes into a kept buffer: no new parameter-sized tensor per step (1.4M floats at 480 units)
        if "root" not in state:
            state["root"] = torch.empty_like(p)
        denom = torch.add(state["acc"].addcmul_(g, g), eps, out=state["root"]).sqrt_()
        if mom > 0:
            p.add_(state["mom"].mul_(mom).addcdiv_(g, denom, value=-lr))
        else:
            p.addcdiv_(g, denom, value=-lr)
