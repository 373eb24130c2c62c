"""Model size: parameter counts (nominal) and bytes of the saved artifact (what ships)."""
from __future__ import annotations

from torch import nn


def count_params(model: nn.Module) -> dict[str, int]:
    """``params_total`` and ``params_nonzero`` over parameters and buffers that hold weights (masks excluded)."""
    total = nonzero = 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith("_mask") or not t.is_floating_point():
            continue
        total += t.numel()
        nonzero += int((t != 0).sum())
    return {"params_total": total, "params_nonzero": nonzero}
