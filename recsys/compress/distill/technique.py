"""The ``distill.method=kd`` / ``ranking`` techniques: build and train the student from the teacher before the
fine-tune stage, keep teaching during it."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from torch import nn

from recsys.compress.base import CompressContext, Technique, register
from recsys.compress.distill import (
    EVAL_KEYS,
    RUN_ID,
    check_teacher,
    load_teacher,
    student_overrides,
    student_problems,
    teacher_topk,
)
from recsys.compress.distill.callback import TeacherCallback
from recsys.errors import ConfigError
from recsys.measure.size import count_params
from recsys.models import build_model


def _stage_figures(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items() if k in EVAL_KEYS}


class _Distill(Technique):
    group = "distill"
    label = "distilled"
    loss = "kd"

    @classmethod
    def check(cls, cfg: Mapping[str, Any]) -> list[str]:
        """Sizes of the student vs the teacher, alpha/temperature ranges, top-K, and what distill.teacher names."""
        g, m = cfg.get("distill", {}), cfg.get("model", {})
        errs = student_problems(m, g.get("student") or {})
        a, t = g.get("alpha"), g.get("temperature")
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0:
            errs.append(f"distill.alpha={a!r}: must be a number in [0, 1]")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
            errs.append(f"distill.temperature={t!r}: must be a positive number")
        ep = g.get("epochs")
        if ep is not None and (not isinstance(ep, int) or isinstance(ep, bool) or ep < 1):
            errs.append(f"distill.epochs={ep!r}: must be null (= train.epochs) or a positive integer")
        ref = g.get("teacher")
        if ref is not None and not Path(str(ref)).expanduser().exists() and not RUN_ID.match(str(ref)):
            errs.append(f"distill.teacher={ref!r}: must be null (the cached dense model of this config), an existing "
                        "artifact file, or a 32-hex MLflow run id")
        if cls.loss == "ranking":
            if m.get("task") != "ranking":
                errs.append(f"distill.method=ranking: defined for the ranking family (NCF), not model.task="
                            f"{m.get('task')!r}; use distill=kd")
            k, lam = g.get("topk"), g.get("rank_lambda")
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                errs.append(f"distill.topk={k!r}: must be a positive integer")
            if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam <= 0:
                errs.append(f"distill.rank_lambda={lam!r}: must be a positive number")
        return errs

    def _teacher(self, ctx: CompressContext, student_spec: dict[str, Any]) -> nn.Module:
        ref = self.cfg.get("teacher")
        if ref is None:
            return ctx.dense
        teacher, meta = load_teacher(str(ref), ctx.cfg)
        checksum = ctx.family.data_summary(ctx.data)[0].get("dataset_checksum")
        check_teacher(teacher, meta, student_spec, checksum, str(ref))
        return teacher

    def apply(self, model: nn.Module, ctx: CompressContext) -> nn.Module:
        from omegaconf import OmegaConf

        cfg = ctx.cfg
        teacher_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        overrides = student_overrides(self.cfg.get("student"), teacher_cfg)
        model_cfg = {**teacher_cfg, **overrides}
        spec = ctx.family.model_spec(model_cfg, ctx.data)
        teacher = self._teacher(ctx, spec)
        teacher = copy.deepcopy(teacher).eval()   # the callback's private frozen copy; ctx.dense stays untouched
        L.seed_everything(int(cfg.seed), workers=True)
        student = build_model(spec)
        init = copy.deepcopy(student.state_dict())
        t_params, s_params = count_params(teacher)["params_total"], count_params(student)["params_total"]
        if s_params >= t_params:
            raise ConfigError(f"distill.student={overrides}: student has {s_params:,} "
                              f"parameters, teacher {t_params:,} (a student must be smaller than its teacher)")
        ctx.metrics.update(teacher_params=float(t_params), student_params=float(s_params),
                           student_param_ratio=s_params / t_params)
        epochs = self.cfg.get("epochs") or int(cfg.train.epochs)
        if self.cfg.get("baseline", True):
            L.seed_everything(int(cfg.seed), workers=True)
            info = ctx.train(student, "student_nokd", epochs=epochs)
            ctx.metrics.update(_stage_figures({**info, **ctx.evaluate(student)}, "nokd_"))
            student.load_state_dict(init)  # the KD run starts from the very same initialisation
        L.seed_everything(int(cfg.seed), workers=True)
        self._callback = self._make_callback(teacher, ctx)
        info = ctx.train(student, "distill", epochs=epochs, callbacks=[self._callback])
        ctx.metrics["distill_train_seconds"] = float(info["train_seconds"])
        ctx.params["distill_loss"] = f"{ctx.family.name}:{self.loss}"
        return student

    def _make_callback(self, teacher: nn.Module, ctx: CompressContext) -> TeacherCallback:
        family = ctx.family.name
        topk = None
        if self.loss == "ranking":
            topk = teacher_topk(teacher, ctx.data.n_users, ctx.data.train_csr(), int(self.cfg["topk"]))
        return TeacherCallback(teacher, family, self.loss, float(self.cfg["alpha"]), float(self.cfg["temperature"]),
                               topk_items=topk, rank_lambda=float(self.cfg.get("rank_lambda", 1.0)))

    def callbacks(self, ctx: CompressContext) -> list[Any]:
        """During the pipeline's fine-tune stage the teacher keeps teaching."""
        return [self._callback] if getattr(self, "_callback", None) is not None else []


@register
class KnowledgeDistillation(_Distill):
    """Soft-label KD: pointwise for ranking/ctr, softmax-logit for session models."""

    method = "kd"
    loss = "kd"


@register
class RankingDistillation(_Distill):
    """Ranking distillation (Tang & Wang 2018) for NCF: the teacher's top-K unobserved items as extra positives."""

    method = "ranking"
    loss = "ranking"
