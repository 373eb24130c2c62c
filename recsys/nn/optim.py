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

import torch


class AdagradM(torch.optim.Optimizer):
    """Adagrad (eps inside the sqrt) + heavy-ball momentum on the scaled step; sparse gradients update rows lazily."""

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

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201  (torch's Optimizer.step signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, eps = group["lr"], group["momentum"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["acc"] = torch.zeros_like(p)
                    if mom > 0:
                        state["mom"] = torch.zeros_like(p)
                g = p.grad
                if g.is_sparse:
                    idx, v = g._indices()[0], g._values()
                    if len(idx) > 1 and not bool((idx[1:] > idx[:-1]).all()):   # not rows in ascending order, once
                        g = g.coalesce()   # each (autograd drops the coalesced flag of GRU4Rec's row gradients)
                        idx, v = g.indices()[0], g.values()
                    acc = state["acc"].index_select(0, idx).addcmul_(v, v)
                    state["acc"].index_copy_(0, idx, acc)
                    upd = v.div(acc.add_(eps).sqrt_()).mul_(-lr)
                    if mom > 0:
                        upd = state["mom"].index_select(0, idx).mul_(mom).add_(upd)
                        state["mom"].index_copy_(0, idx, upd)
                    p.index_add_(0, idx, upd)
                else:   # the root goes into a kept buffer: no new parameter-sized tensor per step (1.4M floats at 480 units)
                    if "root" not in state:
                        state["root"] = torch.empty_like(p)
                    denom = torch.add(state["acc"].addcmul_(g, g), eps, out=state["root"]).sqrt_()
                    if mom > 0:
                        p.add_(state["mom"].mul_(mom).addcdiv_(g, denom, value=-lr))
                    else:
                        p.addcdiv_(g, denom, value=-lr)
        return loss
