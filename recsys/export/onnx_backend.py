"""ONNX Runtime as a deployment backend: export a (dense or quantized) model's ``score(users, items)`` to ONNX, optionally
int8-quantize it with ``onnxruntime.quantization``, and serve it through an ORT session for latency figures.

A quantized model is exported with its dequantized weights (ORT has no 2/4-bit per-row kernels; its int8 path is
``quantize_dynamic``), so ``onnx`` measures the runtime and ``onnx_int8`` ORT's own int8 weights — the latter scores
differ from our artifact's, and ``score_gap`` reports by how much. Backends: ``onnx``, ``onnx_int8``, ``torchao_int8``.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recsys.fileio import atomic_path
from recsys.models import build_model
from recsys.nn.quantized import QuantizedEmbedding, QuantizedLinear, torchao_int8_dynamic_

BACKENDS = ("eager", "onnx", "onnx_int8", "torchao_int8")


class _Score(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.model.score(users, items)


def float_copy(model: nn.Module) -> nn.Module:
    """A plain float model of the same spec with the quantized modules' dequantized weights (what ORT can export)."""
    if not any(isinstance(m, (QuantizedEmbedding, QuantizedLinear)) for m in model.modules()):
        return copy.deepcopy(model).eval()
    out = build_model(model.config())
    state = {k: v for k, v in model.state_dict().items()}
    for name, m in model.named_modules():
        if isinstance(m, (QuantizedEmbedding, QuantizedLinear)):
            state[f"{name}.weight"] = m.weight.clone()
        if isinstance(m, QuantizedLinear) and m.bias is not None:
            state[f"{name}.bias"] = m.bias.clone()
    out.load_state_dict(state)
    return out.eval()


def export_onnx(model: nn.Module, path: str | Path, n: int = 100) -> Path:
    """Export ``score(users, items)`` with a dynamic batch axis (TorchScript-based exporter: fast, no onnxscript run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    users, items = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    with atomic_path(path) as tmp:  # temp file + rename: a killed export leaves no half graph
        torch.onnx.export(_Score(float_copy(model)), (users, items), str(tmp), input_names=["users", "items"],
                          output_names=["scores"], dynamic_axes={"users": {0: "n"}, "items": {0: "n"},
                                                                 "scores": {0: "n"}},
                          opset_version=17, dynamo=False)
    return path


def quantize_onnx_int8(src: str | Path, dst: str | Path) -> Path:
    """ORT dynamic int8 quantization of the exported graph (MatMul weights and Gather tables, per tensor)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(dst) as tmp:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8)
    return Path(dst)


class OrtScorer(nn.Module):
    """``score(users, items)`` served by an ONNX Runtime session (fixed intra-op threads); no ``score_all``."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"users": users.numpy(), "items": items.numpy()})[0]
        return torch.from_numpy(np.asarray(out))

    forward = score


class _TorchaoScorer(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = torchao_int8_dynamic_(float_copy(model))

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.model.score(users, items)

    forward = score


def backend_scorer(model: nn.Module, backend: str, workdir: str | Path, threads: int = 1, name: str = "model"
                   ) -> nn.Module:
    """An object with ``score(users, items)`` that runs ``model`` on ``backend`` (see ``BACKENDS``)."""
    if backend == "eager":
        return model
    workdir = Path(workdir)
    if backend in ("onnx", "onnx_int8"):
        path = export_onnx(model, workdir / f"{name}.onnx")
        if backend == "onnx_int8":
            path = quantize_onnx_int8(path, workdir / f"{name}.int8.onnx")
        return OrtScorer(path, threads)
    if backend == "torchao_int8":
        return _TorchaoScorer(model)
    raise ValueError(f"bench.backends entry {backend!r}: must be one of {list(BACKENDS)}")


@torch.inference_mode()
def score_gap(reference: nn.Module, scorer: nn.Module, users: torch.Tensor, items: torch.Tensor) -> float:
    """Max |score difference| between the artifact and a backend serving it (0 = same numbers, ORT fp32 ~1e-6)."""
    return float((reference.score(users, items) - scorer.score(users, items)).abs().max())


def backend_metrics(model: nn.Module, backends: list[str], family: Any, data: Any, cfg: Any, workdir: str | Path,
                    name: str) -> dict[str, float]:
    """Latency of ``model`` on each non-eager backend: ``<metric>_<backend>`` plus ``score_gap_<backend>``."""
    out: dict[str, float] = {}
    for backend in backends:
        if backend == "eager":
            continue
        scorer = backend_scorer(model, backend, workdir, int(cfg.bench.threads), name=f"{name}-{backend}")
        lat = family.latency(scorer, data, cfg)
        out.update({f"{k}_{backend}": v for k, v in lat.items() if k != "latency_threads"})
        out[f"score_gap_{backend}"] = score_gap(model, scorer, *family.example_inputs(data))
    return out
