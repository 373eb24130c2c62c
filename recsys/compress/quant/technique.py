"""The ``quant.method=ptq`` / ``qat`` techniques the pipeline runs (checks, fake quant / calibration, conversion)."""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from recsys.compress.base import CompressContext, Technique, register
from recsys.compress.quant.api import attach_fake_quant, calibrate, quantize_
from recsys.compress.quant.callback import QuantizationCallback
from recsys.compress.quant.config import SCHEME_KEYS, WIDTH_KEYS, QuantConfig, check_quant, quant_summary


class _Quant(Technique):
    group = "quant"

    @property
    def qc(self) -> QuantConfig:
        return QuantConfig.from_cfg(self.cfg)

    def _report(self, ctx: CompressContext, stats: dict[str, float]) -> None:
        qc = self.qc
        ctx.metrics.update(stats)
        backend = qc.kernel_backend() if qc.min_bits != 32 else "eager"
        kernels = {"torch": "torch.ops.quantized int kernels", "eager": "dequantized fp32",
                   "mixed": "int kernels where the width has one, dequantized fp32 elsewhere"}[backend]
        ctx.params.update({"quant_scheme": quant_summary(qc), "quant_kernels": backend,
                           "latency_backend": f"pytorch-eager ({kernels})"})


@register
class PostTrainingQuantization(_Quant):
    """``quant.method=ptq``: quantize after all training (so prune -> fine-tune -> quantize composes), optionally with
    static activation ranges calibrated on ``quant.calibration_batches`` training batches."""

    method = "ptq"
    label = "ptq"

    @classmethod
    def check(cls, cfg: dict[str, Any]) -> list[str]:
        return check_quant(cfg)

    def finalize(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        qc = self.qc
        ranges = None
        if qc.activations == "static" and qc.for_kind("linear").bits <= 8 and "linear" in qc.targets:
            dm = ctx.family.make_datamodule(ctx.data, ctx.cfg)
            ranges = calibrate(model, dm.train_dataloader(), qc.calibration_batches)
        self._report(ctx, quantize_(model, qc, ranges))
        return model


@register
class QuantizationAwareTraining(_Quant):
    """``quant.method=qat``: fake quantization (STE) of weights and optionally activations during the fine-tune stage
    via :class:`~recsys.compress.quant.callback.QuantizationCallback`, converted to packed integers at the end."""

    method = "qat"
    label = "qat"

    @classmethod
    def check(cls, cfg: dict[str, Any]) -> list[str]:
        errs = check_quant(cfg)
        q = cfg.get("quant") or {}
        epochs = (cfg.get("finetune") or {}).get("epochs", 0)
        if not isinstance(epochs, int) or epochs <= 0:
            errs.append(f"quant.method=qat needs a fine-tune stage: finetune.epochs={epochs!r} must be >= 1")
        for key in WIDTH_KEYS:
            if q.get(key) in (32, 16):
                errs.append(f"quant.{key}={q.get(key)} with quant.method=qat: QAT is for integer widths 8, 4, 2 "
                            "(use quant.method=ptq for fp16/bf16)")
        for key in SCHEME_KEYS:
            if q.get(key) == "kmeans":
                errs.append(f"quant.{key}='kmeans' with quant.method=qat: the codebook is fitted post-training only; "
                            "use quant.method=ptq or a uniform scheme")
        if (cfg.get("trainer") or {}).get("strategy") == "ddp" and "LOCAL_RANK" not in os.environ:
            errs.append("quant.method=qat with trainer.strategy=ddp: the ranks are spawned with pickle, and torch "
                        "cannot pickle the fake-quantized (parametrized) model; use quant.method=ptq, a single "
                        "process, or launch the ranks with torchrun/SLURM (LOCAL_RANK set)")
        return errs

    def apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        attach_fake_quant(model, self.qc)   # so the "qat" stage row shows the quantized model before fine-tuning
        return model

    def callbacks(self, ctx: CompressContext) -> list[Any]:
        # Conversion happens in finalize, in the job's process, never in the callback: under DDP the callback runs in
        # spawned ranks, and Lightning loads rank 0's weights back non-strictly, so a model converted there would
        # come back as the unconverted one with its fine-tuned weights silently dropped (keys no longer match).
        return [QuantizationCallback(self.qc, convert_at_end=False)]

    def finalize(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        self._report(ctx, quantize_(model, self.qc))
        return model
