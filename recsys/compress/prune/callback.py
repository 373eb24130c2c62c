"""Lightning callback that keeps pruning masks in force while fine-tuning and, for ``schedule=gradual``, raises the
sparsity along Zhu & Gupta's cubic schedule over the fine-tune steps.

Written for this project rather than using Lightning's ``ModelPruning``: that callback resets weights to their
initialisation (lottery ticket) and its ``amount`` compounds over calls, whereas ``prune.ratio`` must be the exact final
fraction of the *original* weights and the dense model's trained weights must be kept.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from recsys.compress.prune.api import apply_masks_, cubic_sparsity, mask_state, masked_params

MaskFn = Callable[[nn.Module, float], Any]   # (model, ratio) -> masks the model in place to exactly that ratio


def _model(pl_module: L.LightningModule) -> nn.Module:
    return getattr(pl_module, "model", pl_module)


class PruningCallback(L.Callback):
    """Masks stay enforced (masked weights are zero after every optimizer step); gradual: ratio follows the cubic
    schedule, updated every ``frequency`` steps, final ratio reached at ``end_fraction`` of the steps and at the end.
    The schedule position and the masks are saved with checkpoints and restored from them."""

    def __init__(self, mask_fn: MaskFn, final_ratio: float, schedule: str = "oneshot", initial_ratio: float = 0.0,
                 end_fraction: float = 0.75, frequency: int = 10) -> None:
        if schedule not in ("oneshot", "gradual"):
            raise ValueError(f"prune.schedule={schedule!r}: must be one of ['oneshot', 'gradual']")
        self.mask_fn, self.final_ratio, self.schedule = mask_fn, float(final_ratio), schedule
        self.initial_ratio, self.end_fraction, self.frequency = float(initial_ratio), float(end_fraction), int(frequency)
        self.ratio = self.final_ratio if schedule == "oneshot" else self.initial_ratio
        self.history: list[tuple[int, float]] = []        # (global step, ratio) at every mask update
        self._pending: dict[str, torch.Tensor] | None = None
        self._total_steps = 0
        self._module: nn.Module | None = None   # the model being pruned (state_dict reads its masks)

    # -------------------------------------------------------------------------------------------------- schedule
    def ratio_at(self, step: int) -> float:
        """Target ratio at a global step (oneshot: always the final ratio)."""
        if self.schedule == "oneshot":
            return self.final_ratio
        return cubic_sparsity(step, self._total_steps, self.final_ratio, self.initial_ratio, self.end_fraction,
                              self.frequency)

    def _set(self, model: nn.Module, ratio: float, step: int) -> None:
        self.mask_fn(model, ratio)
        self.ratio = ratio
        self.history.append((step, ratio))

    # ----------------------------------------------------------------------------------------------------- hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Install masks before a checkpoint is restored, so its ``weight_orig`` / ``weight_mask`` entries load."""
        model = self._module = _model(pl_module)
        if not mask_state(model):
            self.mask_fn(model, self.ratio if self.schedule == "oneshot" else 0.0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._total_steps = int(trainer.estimated_stepping_batches)
        model = _model(pl_module)
        if self._pending is not None:        # resumed: the checkpoint's masks are authoritative
            apply_masks_(model, self._pending)
            self._pending = None
        elif self.schedule == "oneshot" or not self.history:
            self._set(model, self.ratio_at(trainer.global_step), trainer.global_step)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
                             ) -> None:
        model = _model(pl_module)
        if self.schedule == "gradual":
            r = self.ratio_at(trainer.global_step)
            if r > self.ratio + 1e-12:
                self._set(model, r, trainer.global_step)
        # Masked weights are recomputed (with autograd) by a forward pre-hook only when their module is *called*;
        # recommenders also read tables directly (GRU4Rec's sampled loss scores targets with ``out.weight``), which
        # would otherwise see a constant tensor and leave ``weight_orig`` without gradient, i.e. frozen.
        for m, name, mask in masked_params(model):
            setattr(m, name, getattr(m, f"{name}_orig") * mask)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Re-zero masked entries underneath the reparametrisation (Adam's momentum would move them otherwise)."""
        model = _model(pl_module)
        with torch.no_grad():
            for m, name, mask in masked_params(model):
                getattr(m, f"{name}_orig").mul_(mask)
                setattr(m, name, getattr(m, f"{name}_orig") * mask)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Whatever the step count, training ends exactly at the final ratio."""
        if abs(self.ratio - self.final_ratio) > 1e-12:
            self._set(_model(pl_module), self.final_ratio, trainer.global_step)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "final_ratio": self.final_ratio, "schedule": self.schedule,
                "history": list(self.history),
                "masks": mask_state(self._module) if self._module is not None else {}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.ratio = float(state_dict["ratio"])
        self.history = [tuple(h) for h in state_dict.get("history", [])]
        self._pending = {k: v.clone() for k, v in state_dict.get("masks", {}).items()}

