"""Lightning callback that runs QAT during fine-tuning and converts to packed integers at the end."""
from __future__ import annotations

import lightning as L

from recsys.compress.quant.api import attach_fake_quant, is_converted, quantize_
from recsys.compress.quant.config import QuantConfig


class QuantizationCallback(L.Callback):
    """QAT during fine-tuning: fake quant attached when fitting starts (if not already), and — unless the fit restores a
    best checkpoint afterwards — conversion to packed integers when fitting ends."""

    def __init__(self, qc: QuantConfig, convert_at_end: bool = True) -> None:
        self.qc, self.convert_at_end = qc, convert_at_end
        self.report: dict[str, float] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        attach_fake_quant(pl_module.model, self.qc)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.convert_at_end and not is_converted(pl_module.model):
            self.report = quantize_(pl_module.model, self.qc)
