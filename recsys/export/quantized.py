"""Artifact format ``quantized``: packed integer codes (two 4-bit or four 2-bit values per byte) with fp16 per-row /
per-channel scales (+ uint8 zero points for asymmetric schemes, or an fp32 codebook for k-means), 16-bit tables as
fp16/bf16, everything else as fp32. A quantized GRU is one record holding each weight matrix in that form (per-row =
per gate-unit scales) plus its fp32 biases and constructor arguments. Reloading rebuilds the same quantized modules from
the same codes, so scores are identical to the in-memory quantized model."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recsys.export.artifact import register_format
from recsys.nn.qtensor import QTensor, pack_bits, packed_nbytes, unpack_bits
from recsys.nn.quantized import QuantizedEmbedding, QuantizedGRU, QuantizedLinear, gru_args


def encode_qtensor(q: QTensor) -> dict[str, Any]:
    """The stored form of one quantized table: only what ``packed_nbytes`` counts, plus shape/scheme metadata."""
    rec: dict[str, Any] = {"bits": q.bits, "scheme": q.scheme, "shape": list(q.shape)}
    if q.bits == 16:
        rec["values"] = q.codes.contiguous()
        return rec
    rec["packed"] = pack_bits(q.codes.reshape(q.shape[0], -1), q.bits)
    if q.codebook is not None:
        rec["codebook"] = q.codebook.float().contiguous()
    else:
        rec["scale"] = q.scale.to(torch.float16).contiguous()
        if q.zero_point is not None:
            rec["zero_point"] = q.zero_point.to(torch.uint8).contiguous()
    return rec


def decode_qtensor(rec: dict[str, Any]) -> QTensor:
    """Inverse of :func:`encode_qtensor`."""
    shape = tuple(rec["shape"])
    if rec["bits"] == 16:
        return QTensor(16, rec["scheme"], shape, rec["values"])
    codes = unpack_bits(rec["packed"], rec["bits"], shape[1]).reshape(shape)
    return QTensor(rec["bits"], rec["scheme"], shape, codes, rec.get("scale"), rec.get("zero_point"),
                   rec.get("codebook"))


def stored_nbytes(rec: dict[str, Any]) -> int:
    """Bytes of the tensors stored for one table (what :func:`~recsys.nn.qtensor.packed_nbytes` predicts),
    nested records (a GRU's matrices) included."""
    return sum(v.numel() * v.element_size() if isinstance(v, torch.Tensor) else
               stored_nbytes(v) if isinstance(v, dict) else 0 for v in rec.values())


def _encode(model: nn.Module) -> dict[str, Any]:
    tables: dict[str, Any] = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantizedEmbedding):
            tables[name] = {"kind": "embedding", "backend": m.backend, **encode_qtensor(m.q)}
        elif isinstance(m, QuantizedLinear):
            tables[name] = {"kind": "linear", "backend": m.backend, "activations": m.activations,
                            "act_bits": m.act_bits, "reduce_range": m.reduce_range, **encode_qtensor(m.q),
                            "bias": None if m.bias is None else m.bias.float().contiguous()}
            if m.activations == "static":
                tables[name]["act_qparams"] = torch.stack([m.act_scale, m.act_zero_point]).float()
        elif isinstance(m, QuantizedGRU):
            tables[name] = {"kind": "gru", "backend": m.backend, "reduce_range": m.reduce_range, "args": gru_args(m),
                            "weights": {n: encode_qtensor(q) for n, q in m.q.items()},
                            "biases": {n: b.float().contiguous() for n, b in m.named_buffers(recurse=False)
                                       if n.startswith("bias_")}}
    dense = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return {"tables": tables, "dense": dense}


def _decode(model: nn.Module, payload: dict[str, Any]) -> nn.Module:
    for name, rec in payload["tables"].items():
        q = decode_qtensor(rec) if rec["kind"] != "gru" else None
        if rec["kind"] == "embedding":
            new: nn.Module = QuantizedEmbedding(q, rec["backend"])
        elif rec["kind"] == "gru":
            new = QuantizedGRU({n: decode_qtensor(w) for n, w in rec["weights"].items()}, rec["biases"], rec["args"],
                               rec["backend"], bool(rec["reduce_range"]))
        else:
            act = tuple(rec["act_qparams"]) if "act_qparams" in rec else None
            new = QuantizedLinear(q, rec["bias"], rec["backend"], rec["activations"], act, rec["act_bits"],
                                  bool(rec.get("reduce_range", False)))
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    model.load_state_dict(payload["dense"])
    return model


def expected_table_nbytes(rec: dict[str, Any]) -> int:
    """Formula for one stored table (codes + scales [+ zero points] or codebook; a GRU: the sum over its weight
    matrices, biases excluded as for Linear), for tests and reports."""
    if rec.get("kind") == "gru":
        return sum(expected_table_nbytes(w) for w in rec["weights"].values())
    rows, cols = rec["shape"][0], (rec["shape"][1] if len(rec["shape"]) > 1 else 1)
    per_channel = "scale" in rec and rec["scale"].numel() > 1
    return packed_nbytes(rows, cols, rec["bits"], rec["scheme"], per_channel)


register_format("quantized", _encode, _decode)
