"""The deployable artifact: what the pipeline would ship, saved to one file and reloaded from it.

Every artifact is a ``torch.save`` of a plain dict ``{"format", "spec", "payload", "meta"}`` where ``spec`` rebuilds the
model (``recsys.models.build_model``) and ``payload`` holds the weights in the format's own encoding. Formats register a
``(save, load)`` pair here; a new encoding (sparse, packed integers, ...) is one ``register_format`` call.

Only tensors and plain values (dict, list, tuple, str, int, float, bool, None) go in, and files are read back with
``weights_only=True``: torch's restricted unpickler, which refuses every other global, so a tampered file is an
:class:`~recsys.errors.UnreadableFileError` naming it and no code in it runs. (torch.save rather than safetensors keeps
the shipped bytes - the size metric - what they were; safetensors holds flat tensors only, and the nested payloads of
the sparse / quantized / low-rank encodings would need a second, hand-made container around it.) Files are written to a
temp file and renamed (``recsys.fileio``), so a killed job never leaves a truncated artifact.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recsys.errors import UnreadableFileError
from recsys.fileio import atomic_path
from recsys.models import build_model

Encoder = Callable[[nn.Module], Any]
Decoder = Callable[[nn.Module, Any], nn.Module]
_FORMATS: dict[str, tuple[Encoder, Decoder]] = {}


def register_format(name: str, encode: Encoder, decode: Decoder) -> None:
    """Register an artifact encoding: ``encode(model) -> payload``; ``decode(fresh_model, payload) -> model``."""
    _FORMATS[name] = (encode, decode)


def _import_all() -> None:
    """Import every module of ``recsys.export`` so that their ``register_format`` calls have run."""
    import importlib
    import pkgutil

    import recsys.export as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name != "artifact":
            importlib.import_module(f"recsys.export.{mod.name}")


def codec(name: str) -> tuple[Encoder, Decoder]:
    """``(encode, decode)`` of the registered format ``name`` (formats register when ``recsys.export`` loads them)."""
    if name not in _FORMATS:
        _import_all()
    if name not in _FORMATS:
        raise KeyError(f"unknown artifact format {name!r}: known formats are {sorted(_FORMATS)}")
    return _FORMATS[name]


def is_registered(name: str) -> bool:
    return name in _FORMATS


def formats() -> list[str]:
    _import_all()
    return sorted(_FORMATS)


def _dense_encode(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _dense_decode(model: nn.Module, payload: dict[str, torch.Tensor]) -> nn.Module:
    model.load_state_dict(payload)
    return model


register_format("dense", _dense_encode, _dense_decode)


def save_artifact(model: nn.Module, path: str | Path, fmt: str = "dense", meta: dict | None = None,
                  spec: dict | None = None) -> int:
    """Write ``model`` in encoding ``fmt`` to ``path``; returns the file's byte count."""
    if fmt not in _FORMATS:
        _import_all()
    if fmt not in _FORMATS:
        raise ValueError(f"unknown artifact format {fmt!r}; known: {formats()}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encode, _ = _FORMATS[fmt]
    blob = {"format": fmt, "spec": spec if spec is not None else model.config(), "payload": encode(model),
            "meta": meta or {}}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return os.path.getsize(path)


def load_file(path: str | Path, what: str = "artifact") -> Any:
    """``torch.load`` with ``weights_only=True`` (nothing is unpickled beyond tensors and plain values); a damaged
    file or one holding anything else is an :class:`UnreadableFileError` that names ``path``."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableFileError(f"{what} {path} holds more than tensors and plain values and was NOT loaded "
                                  f"(loads never unpickle objects; a file written by this harness never holds "
                                  f"them, so this one was written by something else or tampered with): {first}") from e
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableFileError(f"{what} {path} cannot be read (damaged or truncated, "
                                  f"{path.stat().st_size if path.exists() else 0} bytes): {first}") from e


def _blob(path: str | Path, what: str = "artifact") -> dict:
    blob = load_file(path, what)
    if not isinstance(blob, dict) or not {"format", "spec", "payload"} <= set(blob):
        raise UnreadableFileError(f"{what} {path} is not an artifact of this harness (expected a dict with format, "
                                  f"spec, payload; found {type(blob).__name__})")
    return blob


def load_artifact(path: str | Path, what: str = "artifact") -> nn.Module:
    """Rebuild the model saved at ``path`` (in eval mode)."""
    blob = _blob(path, what)
    fmt = blob["format"]
    if fmt not in _FORMATS:
        _import_all()
    if fmt not in _FORMATS:
        raise ValueError(f"{path}: artifact format {fmt!r} is not registered (known: {formats()})")
    _, decode = _FORMATS[fmt]
    return decode(build_model(blob["spec"]), blob["payload"]).eval()


def artifact_meta(path: str | Path, what: str = "artifact") -> dict:
    """The ``meta`` dict saved with the artifact at ``path`` (read as safely as the artifact itself)."""
    return _blob(path, what).get("meta") or {}


@torch.inference_mode()
def check_same_scores(original: nn.Module, reloaded: nn.Module, users: torch.Tensor, items: torch.Tensor,
                      atol: float = 0.0) -> float:
    """Max |score difference| between the in-memory model and its reloaded artifact; raises if above ``atol``."""
    original.eval()
    diff = (original.score(users, items) - reloaded.score(users, items)).abs().max().item()
    if diff > atol:
        raise AssertionError(f"reloaded artifact scores differ from the in-memory model by {diff:g} (allowed {atol:g})")
    return diff
