"""The ``lowrank.method=svd`` technique: config checks, factorisation before fine-tuning, artifact choice after it."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from recsys.compress.base import CompressContext, Technique, register
from recsys.compress.lowrank import TARGETS, LowRankConfig, factorize_, static_embedding_dims
from recsys.errors import ConfigError


@register
class LowRankSVD(Technique):
    """Truncated-SVD factorisation of embedding tables (and optionally Linear layers)."""

    group = "lowrank"
    method = "svd"
    label = "lowrank"

    @classmethod
    def check(cls, cfg: Mapping[str, Any]) -> list[str]:
        """rank xor energy, valid ranges, known targets, rank below every embedding width of the model config."""
        g = cfg.get("lowrank", {})
        rank, energy, targets = g.get("rank"), g.get("energy"), g.get("targets", ["embeddings"])
        errs: list[str] = []
        if (rank is None) == (energy is None):
            errs.append(f"lowrank.rank={rank!r}, lowrank.energy={energy!r}: set exactly one of them "
                        "(e.g. lowrank.rank=8 or lowrank.energy=0.9 with lowrank.rank=null)")
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
            errs.append(f"lowrank.rank={rank!r}: must be a positive integer")
        if energy is not None and (isinstance(energy, bool) or not isinstance(energy, (int, float))
                                   or not 0.0 < energy <= 1.0):
            errs.append(f"lowrank.energy={energy!r}: must be a number in (0, 1]")
        if not isinstance(targets, (list, tuple)) or not targets or any(t not in TARGETS for t in targets):
            errs.append(f"lowrank.targets={targets!r}: must be a non-empty list drawn from {list(TARGETS)}")
        if isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1 and "embeddings" in (targets or []):
            model_cfg = dict(cfg.get("model", {}))
            d = cfg.get("distill", {})
            if isinstance(d, Mapping) and d.get("method", "none") not in (None, "none"):
                # low-rank runs after distillation, i.e. on the student
                model_cfg.update({k: v for k, v in (d.get("student") or {}).items() if v is not None})
            for key, dim in static_embedding_dims(model_cfg).items():
                if rank >= dim:
                    errs.append(f"lowrank.rank={rank}: must be smaller than every embedding width, but {key}={dim} "
                                "(a rank >= the matrix's smaller dimension saves nothing)")
        return errs

    def apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        config = LowRankConfig(rank=self.cfg.get("rank"), energy=self.cfg.get("energy"),
                               targets=tuple(self.cfg.get("targets", ["embeddings"])))
        report = factorize_(model, config)
        mods = report["modules"]
        if not mods:  # say so instead of shipping the dense model as if it were compressed
            raise ConfigError(f"lowrank=svd: no matrix of {type(model).__name__} is factorised with "
                              f"lowrank.targets={list(config.targets)} at lowrank.rank={config.rank} / "
                              f"lowrank.energy={config.energy} (no plain nn.Embedding / nn.Linear a factorisation "
                              "makes smaller); the shipped model would be the dense one")
        ctx.metrics["lowrank_modules"] = float(len(mods))
        ctx.metrics["lowrank_params_ratio"] = report["params_after"] / max(report["params_before"], 1)
        if mods:
            ctx.metrics["lowrank_mean_energy_kept"] = sum(m["energy_kept"] for m in mods.values()) / len(mods)
            ctx.metrics["lowrank_max_rank"] = float(max(m["rank"] for m in mods.values()))
        ctx.params["lowrank_ranks"] = ",".join(f"{p}:{m['rank']}" for p, m in mods.items()) or "(none)"
        return model
