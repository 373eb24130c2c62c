"""Progress output that suits where it goes: Lightning's per-step bar on a terminal, one line per epoch in a log file
(multirun jobs, CI, ``> log``), where a bar would write one carriage-return update per refresh."""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks import Callback

from recsys.errors import ConfigError

#: values of ``trainer.enable_progress_bar``: ``auto`` = the bar when stdout (where Lightning's bar writes) is a TTY
PROGRESS_BAR_CHOICES = (True, False, "auto")


def resolve_progress_bar(value: Any, stream: TextIO | None = None) -> bool:
    """``trainer.enable_progress_bar`` -> bool: ``auto`` is True only when ``stream`` (default stdout) is a terminal."""
    if isinstance(value, bool):
        return value
    if value == "auto":
        stream = stream if stream is not None else sys.stdout
        isatty = getattr(stream, "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:  # a closed stream
            return False
    raise ConfigError(f"trainer.enable_progress_bar={value!r}: must be one of true, false, auto")


def _fmt(v: float) -> str:
    return f"{v:.4g}"


class EpochLines(Callback):
    """Prints ``[stage] epoch e/E  train_loss=..  val_...=..  (12.3s)`` once per training epoch, after validation.

    Shows every ``<stage>/epoch_*`` metric the task logged (train loss first), so each family's own validation
    metrics (HR/NDCG, AUC/logloss) appear without this callback knowing them."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        stage = str(getattr(pl_module, "stage", "train"))
        prefix = f"{stage}/epoch_"
        found = {k[len(prefix):]: float(v) for k, v in trainer.callback_metrics.items()
                 if k.startswith(prefix) and getattr(v, "numel", lambda: 1)() == 1}
        names = sorted(found, key=lambda n: (n != "train_loss", n))
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        parts = [f"[{stage}] epoch {trainer.current_epoch + 1}/{total}", *(f"{n}={_fmt(found[n])}" for n in names),
                 f"({time.perf_counter() - self._t0:.1f}s)"]
        print("  ".join(parts), file=self.stream if self.stream is not None else sys.stdout, flush=True)
