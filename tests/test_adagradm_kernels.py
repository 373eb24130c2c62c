"""AdagradM's numba kernels (dense elements, sparse item rows, a 1-D row-updated bias) take the same steps as its torch
element-wise path."""
from __future__ import annotations

import pytest
import torch

from recsys.models.gru4rec import _Rows
from recsys.nn.optim import AdagradM


def _run(kernels: bool, momentum: float, dtype: torch.dtype, steps: int = 40) -> tuple[torch.Tensor, ...]:
    """A dense weight and a row-updated table (sparse gradients, rows absent on most steps) trained together."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(7, 5, dtype=dtype))
    table = torch.nn.Parameter(torch.randn(30, 4, dtype=dtype))
    bias = torch.nn.Parameter(torch.randn(30, dtype=dtype))   # 1-D, sparse row gradients (GRU4Rec's item bias)
    start = table.detach().clone()
    opt = AdagradM([w, table, bias], lr=0.3, momentum=momentum, eps=1e-6)
    opt.kernels = kernels
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        rows = torch.randint(0, 30, (6,), generator=g)
        x = torch.randn(6, 7, generator=g, dtype=dtype)
        uniq, pos = torch.unique(rows, return_inverse=True)
        b = _Rows.apply(bias, uniq, None)[pos]
        loss = ((x @ w)[:, :4] * torch.nn.functional.embedding(rows, table, sparse=True) + b[:, None]).sum().pow(2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    st, sb = opt.state[table], opt.state[bias]
    return (w.detach(), table.detach(), st["acc"], st.get("mom", torch.zeros(0)), start, bias.detach(), sb["acc"],
            sb.get("mom", torch.zeros(0)))


@pytest.mark.parametrize("momentum", [0.0, 0.2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernels_take_the_torch_paths_steps(momentum, dtype):
    fast, ref = _run(True, momentum, dtype), _run(False, momentum, dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b in zip(fast, ref):
        assert torch.allclose(a, b, rtol=tol, atol=tol), (a - b).abs().max()
    moved = (fast[1] != fast[4]).any(1)
    assert bool(moved.any())
