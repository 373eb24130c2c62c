"""The runtime a served model runs on: every runtime that reproduces the artifact's scores is timed on the request the
server answers most (one user x the full catalogue, FLOP-bound) and the fastest wins. Candidates: ``eager`` (the
reloaded artifact as is: fp32, int8 kernels, sparse or pruned) and ``onnx`` (ONNX Runtime on the exported
``score(users, items)``, see ``recsys.export.onnx_backend``); session models (a recurrent step) serve eagerly."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

SCORE_TOLERANCE = 1e-4   # an ONNX export must give the artifact's scores to this (fp32 reorderings: ~1e-6)


class EagerScorer:
    """The reloaded artifact in PyTorch."""

    name = "eager"

    def __init__(self, model: nn.Module, n_items: int) -> None:
        self.model, self.n_items = model.eval(), n_items
        self._all = np.arange(n_items, dtype=np.int64)

    @torch.inference_mode()
    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores of (user, item) index pairs."""
        return self.model.score(torch.as_tensor(users, dtype=torch.long),
                                torch.as_tensor(items, dtype=torch.long)).float().numpy()

    @torch.inference_mode()
    def score_all_batch(self, users: np.ndarray) -> np.ndarray:
        """(len(users), n_items) scores: the model's full-catalogue scoring when it has one, else all pairs."""
        users = np.asarray(users, dtype=np.int64)
        if hasattr(self.model, "score_all"):
            return self.model.score_all(torch.as_tensor(users)).float().numpy()
        return self.score_pairs(np.repeat(users, self.n_items), np.tile(self._all, len(users))).reshape(
            len(users), self.n_items)

    def score(self, user: int, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        return self.score_pairs(np.full(len(items), user, dtype=np.int64), items)

    def score_all(self, user: int) -> np.ndarray:
        return self.score_all_batch(np.array([user]))[0]


class OnnxScorer:
    """The exported ``score(users, items)`` graph in an ONNX Runtime session."""

    name = "onnx"

    def __init__(self, path: str | Path, n_items: int, threads: int) -> None:
        from recsys.export.onnx_backend import OrtScorer

        self.ort, self.n_items = OrtScorer(path, threads), n_items
        self._all = np.arange(n_items, dtype=np.int64)

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores of (user, item) index pairs, one session run."""
        out = self.ort.session.run(None, {"users": np.asarray(users, dtype=np.int64),
                                          "items": np.asarray(items, dtype=np.int64)})[0]
        return np.asarray(out, dtype=np.float32)

    def score_all_batch(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        return self.score_pairs(np.repeat(users, self.n_items), np.tile(self._all, len(users))).reshape(
            len(users), self.n_items)

    def score(self, user: int, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        return self.score_pairs(np.full(len(items), user, dtype=np.int64), items)

    def score_all(self, user: int) -> np.ndarray:
        return self.score_all_batch(np.array([user]))[0]


def make_scorer(runtime: str, model: nn.Module, n_items: int, onnx_path: str | Path | None, threads: int) -> Any:
    """The scorer of ``runtime`` (``eager`` or ``onnx``)."""
    if runtime == "eager":
        return EagerScorer(model, n_items)
    if runtime == "onnx":
        if onnx_path is None:
            raise ValueError("runtime 'onnx' needs the exported .onnx file")
        return OnnxScorer(onnx_path, n_items, threads)
    raise ValueError(f"serving runtime {runtime!r}: must be 'eager' or 'onnx'")


def _median_ms(fn: Any, users: np.ndarray, warmup: int) -> float:
    for u in users[:warmup]:
        fn(int(u))
    times = []
    for u in users[warmup:]:
        t0 = time.perf_counter()
        fn(int(u))
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def pick_runtime(model: nn.Module, n_users: int, n_items: int, workdir: str | Path, threads: int = 1,
                 requests: int = 30) -> tuple[str, dict[str, float], Path | None]:
    """(fastest runtime, {runtime: median full-catalogue ms, or why it was left out}, the .onnx path or None)."""
    from recsys.export.onnx_backend import export_onnx

    prev = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        eager = EagerScorer(model, n_items)
        scorers: dict[str, Any] = {"eager": eager}
        notes: dict[str, Any] = {}
        onnx_path: Path | None = None
        try:
            onnx_path = export_onnx(model, Path(workdir) / "serve.onnx")
            onnx = OnnxScorer(onnx_path, n_items, threads)
            users = np.random.default_rng(0).integers(0, n_users, 4)
            gap = max(float(np.abs(eager.score_all(int(u)) - onnx.score_all(int(u))).max()) for u in users)
            if gap <= SCORE_TOLERANCE:
                scorers["onnx"] = onnx
            else:
                notes["onnx"] = f"scores differ by {gap:.2g}"
        except Exception as e:  # noqa: BLE001 - any export/runtime failure means "ONNX does not serve this model"
            notes["onnx"] = f"not exportable: {type(e).__name__}: {str(e)[:200]}"
        users = np.random.default_rng(1).integers(0, n_users, requests + 5)
        timings = {name: _median_ms(s.score_all, users, 5) for name, s in scorers.items()}
    finally:
        torch.set_num_threads(prev)
    best = min(timings, key=timings.get)
    return best, {**timings, **notes}, (onnx_path if best == "onnx" else None)
