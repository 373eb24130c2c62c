"""``QuantConfig`` — what ``quantize_`` does, built from the ``quant`` config group — and its checks."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from recsys.models import model_class
from recsys.nn.qtensor import BITS, DTYPES, GRANULARITIES, SCHEMES

TARGETS = ("embeddings", "linear", "gru")      # gru: the weight matrices of an nn.GRU (GRU4Rec)
DEFAULT_TARGETS = ("embeddings", "linear")
KINDS = {"embeddings": "embedding", "linear": "linear", "gru": "gru"}   # target name -> module kind
KIND_NAMES = {"embeddings": "embedding table", "linear": "Linear", "gru": "GRU"}
WIDTH_KEYS = ("bits", "linear_bits", "gru_bits")            # the quant keys that set a width (per kind)
SCHEME_KEYS = ("scheme", "linear_scheme", "gru_scheme")     # ... and a scheme
ACTIVATIONS = ("none", "dynamic", "static")
BACKENDS = ("auto", "eager", "torch")


# ---------------------------------------------------------------------------------------------------- configuration
@dataclass
class QuantConfig:
    """What ``quantize_`` does; built from the ``quant`` config group."""

    bits: int = 8
    dtype: str = "float16"
    scheme: str = "symmetric"
    granularity: str = "channel"
    targets: tuple[str, ...] = DEFAULT_TARGETS
    activations: str = "dynamic"
    activation_bits: int = 8
    calibration_batches: int = 16
    backend: str = "auto"
    kmeans_iters: int = 25
    linear_bits: int | None = None       # Linear layers' own width / scheme (None = same as the embeddings')
    linear_scheme: str | None = None
    gru_bits: int | None = None          # the GRU weight matrices' own width / scheme (None = same as the embeddings')
    gru_scheme: str | None = None
    reduce_range: bool = False           # 7-bit activations in the int8 Linear/GRU kernels (pre-VNNI x86 overflow guard)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_cfg(cls, cfg: dict[str, Any]) -> QuantConfig:
        """From the ``quant`` group (unknown keys kept in ``extra``)."""
        names = set(cls.__dataclass_fields__) - {"extra"}
        kw = {k: v for k, v in cfg.items() if k in names}
        if "targets" in kw:
            kw["targets"] = tuple(kw["targets"])
        return cls(**kw, extra={k: v for k, v in cfg.items() if k not in names})

    def _own(self, kind: str) -> tuple[int | None, str | None]:
        """A kind's own (bits, scheme) override; (None, None) = the embeddings' settings."""
        return {"linear": (self.linear_bits, self.linear_scheme),
                "gru": (self.gru_bits, self.gru_scheme)}.get(kind, (None, None))

    def for_kind(self, kind: str) -> QuantConfig:
        """The settings that apply to one kind of module (``embedding``, ``linear`` or ``gru``): mixed widths such as
        4-bit embedding tables with 8-bit Linear layers are a per-kind ``bits`` / ``scheme``."""
        bits, scheme = self._own(kind)
        if bits is None and scheme is None:
            return self
        return replace(self, bits=self.bits if bits is None else bits, scheme=self.scheme if scheme is None else scheme,
                       linear_bits=None, linear_scheme=None, gru_bits=None, gru_scheme=None)

    def kernel_backend(self, kind: str | None = None) -> str:
        """The runtime that serves the quantized modules (of one kind, or of all targeted kinds when they agree):
        ``torch`` (integer kernels), ``eager`` (dequantized) or ``mixed``."""
        if kind is None:
            kinds = {self.for_kind(k).kernel_backend(k) for t, k in KINDS.items() if t in self.targets}
            return kinds.pop() if len(kinds) == 1 else "mixed"
        qc = self.for_kind(kind)
        if qc.backend != "auto":
            return qc.backend
        int_kernel = qc.bits in (8, 4, 2) and qc.scheme != "kmeans"
        return "torch" if int_kernel and (kind == "embedding" or qc.activations == "dynamic") else "eager"

    @property
    def min_bits(self) -> int:
        """The narrowest width in use (32 means nothing is quantized)."""
        return min((self.bits, *(b for b in (self.linear_bits, self.gru_bits) if b is not None)))


def check_quant(cfg: dict[str, Any]) -> list[str]:
    """Every problem with the ``quant`` group, named by key, value and what is allowed."""
    q = cfg.get("quant") or {}
    errs: list[str] = []

    def bad(key: str, allowed: Any) -> None:
        errs.append(f"quant.{key}={q.get(key)!r}: must be one of {list(allowed)}")

    if q.get("bits") not in BITS or isinstance(q.get("bits"), bool):
        bad("bits", BITS)
    for kind in ("linear", "gru"):
        b, sch = q.get(f"{kind}_bits"), q.get(f"{kind}_scheme")
        if b is not None and (b not in BITS or isinstance(b, bool)):
            bad(f"{kind}_bits", (None, *BITS))
        if sch is not None and sch not in SCHEMES:
            bad(f"{kind}_scheme", (None, *SCHEMES))
    if not isinstance(q.get("reduce_range", False), bool):
        bad("reduce_range", (True, False))
    if q.get("dtype", "float16") not in DTYPES:
        bad("dtype", DTYPES)
    if q.get("scheme", "symmetric") not in SCHEMES:
        bad("scheme", SCHEMES)
    if q.get("granularity", "channel") not in GRANULARITIES:
        bad("granularity", GRANULARITIES)
    targets = q.get("targets", list(DEFAULT_TARGETS))
    model = (cfg.get("model") or {}).get("name")
    if not isinstance(targets, (list, tuple)) or not targets or any(t not in TARGETS for t in targets):
        errs.append(f"quant.targets={targets!r}: must be a non-empty list drawn from {list(TARGETS)}")
    elif (cls := model_class(cfg.get("model") or {})) is not None and hasattr(cls, "QUANT_KINDS") \
            and set(targets).isdisjoint(cls.QUANT_KINDS):
        names = " / ".join(KIND_NAMES[t] for t in targets)
        errs.append(f"quant.targets={list(targets)!r}: model={model} has no {names}, so nothing would be quantized "
                    f"(it has: {list(cls.QUANT_KINDS)}); add one of those to quant.targets")
    if q.get("activations", "dynamic") not in ACTIVATIONS:
        bad("activations", ACTIVATIONS)
    elif q.get("activations") == "static" and (cfg.get("model") or {}).get("task") == "session":
        # calibration feeds (users, items) batches; session-parallel batches carry hidden state, and GRU4Rec's loss
        # reads the output table without calling the Linear, so no input range would be observed for it
        errs.append(f"quant.activations='static' with model={model} (a session model): static activation ranges are "
                    "calibrated for pairwise (user, item) models only; use quant.activations=dynamic or none")
    if q.get("activation_bits", 8) not in (8, 4, 2):
        bad("activation_bits", (8, 4, 2))
    if q.get("backend", "auto") not in BACKENDS:
        bad("backend", BACKENDS)
    cb = q.get("calibration_batches", 16)
    if q.get("activations") == "static" and (not isinstance(cb, int) or isinstance(cb, bool) or cb < 1):
        errs.append(f"quant.calibration_batches={cb!r}: must be a positive integer when quant.activations=static")
    if errs:
        return errs
    if q.get("backend") == "torch":
        for key in WIDTH_KEYS:
            if q.get(key) is not None and q[key] not in (8, 4, 2):
                errs.append(f"quant.backend='torch' cannot run quant.{key}={q[key]}: PyTorch's quantized kernels are "
                            "integer-only (bits 8, 4, 2); use quant.backend=eager or auto")
        for key in SCHEME_KEYS:
            if q.get(key) == "kmeans":
                errs.append(f"quant.backend='torch' cannot run quant.{key}='kmeans' (no codebook kernels); use "
                            "quant.backend=eager or auto")
        for target, kernel in (("linear", "int8 Linear"), ("gru", "dynamic int8 GRU")):
            if target in targets and q.get("activations", "dynamic") != "dynamic":
                errs.append(f"quant.backend='torch' with quant.activations={q.get('activations')!r} and {target} in "
                            f"quant.targets: its {kernel} kernel quantizes activations dynamically; use "
                            "quant.activations=dynamic or quant.backend=eager")
    return errs


def quant_summary(qc: QuantConfig) -> str:
    """Short human label (fp16, int8-sym-channel, int4-kmeans ...)."""
    def one(c: QuantConfig) -> str:
        if c.bits == 32:
            return "fp32"
        if c.bits == 16:
            return "fp16" if c.dtype == "float16" else "bf16"
        return f"int{c.bits}-{c.scheme}-{c.granularity}"

    parts = {"emb": one(qc), "linear": one(qc.for_kind("linear"))}
    if "gru" in qc.targets:
        parts["gru"] = one(qc.for_kind("gru"))
    labels = set(parts.values())
    return labels.pop() if len(labels) == 1 else " + ".join(f"{k} {v}" for k, v in parts.items())


def trainable_params(model: nn.Module) -> int:
    """Parameters that still require grad (after conversion quantized weights are buffers)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
