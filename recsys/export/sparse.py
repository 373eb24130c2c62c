"""Sparse artifact encoding for unstructured-pruned models: each tensor is stored in whichever of three encodings is
smallest — dense, bitmap (1 bit per entry + the non-zero values) or CSR (row pointers + narrow column indices + values).

Written by hand because torch's sparse layouts store 32/64-bit indices for every non-zero (>= 8 bytes each with fp32
values), which loses to dense below ~50 % sparsity; at the 20-80 % sparsities of pruned NCF models a bitmap costs 1/32
of the dense size on top of the values, and embedding tables have few columns, so CSR column indices fit in 1-2 bytes.
Values are stored as the original fp32, so the reloaded model scores identically.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from recsys.export.artifact import register_format


#: bytes torch.save spends per stored tensor beyond its data (zip headers, 64-byte alignment, pickle entry), measured
#: as ~200-260 B with torch 2.13; counted so that tiny tensors stay dense, where a second storage would cost more.
STORAGE_OVERHEAD = 256


def _index_dtype(cols: int) -> torch.dtype:
    return torch.uint8 if cols <= 256 else torch.int16 if cols <= 32768 else torch.int32


def encoded_nbytes(t: torch.Tensor) -> dict[str, int]:
    """Estimated file bytes of ``t`` in each applicable encoding (data + per-storage overhead)."""
    t = t.detach()
    n, nnz, item = t.numel(), int((t != 0).sum()), t.element_size()
    out = {"dense": n * item + STORAGE_OVERHEAD}
    if t.is_floating_point():
        out["bitmap"] = (n + 7) // 8 + nnz * item + 2 * STORAGE_OVERHEAD
        if t.dim() == 2:
            idx = torch.empty((), dtype=_index_dtype(t.shape[1])).element_size()
            out["csr"] = (t.shape[0] + 1) * 4 + nnz * (idx + item) + 3 * STORAGE_OVERHEAD
    return out


def encode_tensor(t: torch.Tensor) -> dict[str, Any]:
    """The smallest encoding of one tensor (ties go to dense)."""
    t = t.detach().cpu().contiguous()
    sizes = encoded_nbytes(t)
    kind = min(sizes, key=lambda k: (sizes[k], k != "dense"))
    if kind == "dense":
        return {"kind": "dense", "data": t.clone()}
    nz = t != 0
    if kind == "bitmap":
        bits = np.packbits(nz.flatten().numpy())
        return {"kind": "bitmap", "shape": tuple(t.shape), "bits": torch.from_numpy(bits), "values": t[nz].clone()}
    rows, cols = nz.nonzero(as_tuple=True)
    indptr = torch.zeros(t.shape[0] + 1, dtype=torch.int32)
    indptr[1:] = torch.cumsum(torch.bincount(rows, minlength=t.shape[0]), 0).to(torch.int32)
    return {"kind": "csr", "shape": tuple(t.shape), "indptr": indptr, "indices": cols.to(_index_dtype(t.shape[1])),
            "values": t[rows, cols].clone()}


def decode_tensor(enc: dict[str, Any]) -> torch.Tensor:
    """Inverse of ``encode_tensor``."""
    if enc["kind"] == "dense":
        return enc["data"]
    shape, values = enc["shape"], enc["values"]
    out = torch.zeros(shape, dtype=values.dtype)
    if enc["kind"] == "bitmap":
        n = int(np.prod(shape)) if shape else 1
        mask = torch.from_numpy(np.unpackbits(enc["bits"].numpy(), count=n).astype(bool))
        out.view(-1)[mask] = values
        return out
    indptr = enc["indptr"].long()
    rows = torch.repeat_interleave(torch.arange(shape[0]), indptr[1:] - indptr[:-1])
    out[rows, enc["indices"].long()] = values
    return out


def encode(model: nn.Module) -> dict[str, dict[str, Any]]:
    return {k: encode_tensor(v) for k, v in model.state_dict().items()}


def decode(model: nn.Module, payload: dict[str, dict[str, Any]]) -> nn.Module:
    model.load_state_dict({k: decode_tensor(v) for k, v in payload.items()})
    return model


def sparse_is_smaller(model: nn.Module) -> bool:
    """Whether the sparse encoding's tensor payload is smaller than the dense one (so the pipeline ships it)."""
    dense = sparse = 0
    for t in model.state_dict().values():
        sizes = encoded_nbytes(t)
        dense += sizes["dense"]
        sparse += min(sizes.values())
    return sparse < dense


register_format("sparse", encode, decode)
