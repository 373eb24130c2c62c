"""Knowledge distillation (``distill.method=kd`` / ``ranking``): train a smaller student of the same model family.

The student is the model config with ``distill.student`` overrides (fewer factors, a narrower MLP, fewer GRU units).
The teacher is ``ctx.dense`` (the cached dense model of this job's config) or an explicit artifact / MLflow run
(``distill.teacher``); it is frozen, lives only in the :class:`TeacherCallback` — never in the student's module tree,
optimizer or artifact. The callback computes the teacher's outputs for each training batch and registers a loss term
in ``task.extra_losses`` (a Lightning callback cannot change the loss itself), dispatching on the task family:

* ``kd`` for ranking / ctr: pointwise soft-label KD (Hinton et al.), total loss
  ``(1 - alpha) * BCE(s, y) + alpha * T^2 * BCE(s / T, sigmoid(t / T))``;
* ``kd`` for session: logit KD over the full item softmax, ``(1 - alpha) * L_task + alpha * T^2 * KL(p_t^T || p_s^T)``
  (L_task = the task's own sampled loss; the teacher keeps its own session-parallel GRU state);
* ``ranking`` (NCF only): ranking distillation (Tang & Wang, KDD 2018): each user's top-K unobserved items of the
  teacher are extra positives weighted by rank position, ``(1 - alpha) * L_base + alpha * L_RD``.

With ``distill.baseline=true`` the same student (same init, seed and epochs) is first trained without distillation and
its figures are logged as ``nokd_*`` so a KD gain can be told from noise.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from recsys.compress.base import CompressContext, Technique, register
from recsys.errors import ConfigError
from recsys.measure.size import count_params
from recsys.models import build_model

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
EVAL_KEYS = ("hr_at_10", "ndcg_at_10", "mrr_at_10", "recall_at_10", "full_ndcg_at_10", "val_hr_at_10",
             "val_ndcg_at_10", "auc", "logloss", "train_seconds")


# ------------------------------------------------------------------------------------------------------------ losses
def pointwise_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      alpha: float, temperature: float) -> torch.Tensor:
    """(1 - alpha) BCE(s, y) + alpha T^2 BCE(s/T, sigmoid(t/T)); T^2 keeps the soft-term gradients at scale."""
    hard = F.binary_cross_entropy_with_logits(student_logits, labels)
    soft_target = torch.sigmoid(teacher_logits / temperature)
    soft = F.binary_cross_entropy_with_logits(student_logits / temperature, soft_target)
    return (1 - alpha) * hard + alpha * temperature ** 2 * soft


def softmax_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                    alpha: float, temperature: float) -> torch.Tensor:
    """(1 - alpha) CE(s, y) + alpha T^2 KL(softmax(t/T) || softmax(s/T)) over the item axis (session models)."""
    hard = F.cross_entropy(student_logits, targets)
    return (1 - alpha) * hard + alpha * softmax_kl(student_logits, teacher_logits, temperature)


def softmax_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(t/T) || softmax(s/T)) over the last axis, averaged over rows."""
    return temperature ** 2 * F.kl_div(F.log_softmax(student_logits / temperature, -1),
                                       F.log_softmax(teacher_logits / temperature, -1),
                                       reduction="batchmean", log_target=True)


def rank_weights(k: int, lam: float) -> torch.Tensor:
    """Position importance of the teacher's top-K (Tang & Wang 2018, w_r ~ exp(-r / lambda)), normalised to sum 1."""
    w = torch.exp(-torch.arange(1, k + 1, dtype=torch.float32) / lam)
    return w / w.sum()


def ranking_distill_loss(student_topk_logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """-sum_r w_r log sigmoid(s(u, pi_r)), averaged over users: the teacher's top-K as weighted positives."""
    return -(F.logsigmoid(student_topk_logits) * weights).sum(-1).mean()


@torch.no_grad()
def teacher_topk(teacher: nn.Module, n_users: int, known: tuple[np.ndarray, np.ndarray], k: int,
                 batch_users: int = 512) -> torch.Tensor:
    """Each user's K highest-scored items under the teacher, excluding the items the user already has (CSR)."""
    indptr, indices = known
    teacher.eval()
    out = []
    for lo in range(0, n_users, batch_users):
        users = torch.arange(lo, min(lo + batch_users, n_users))
        scores = teacher.score_all(users).float()
        for row, u in enumerate(users.tolist()):
            scores[row, torch.as_tensor(indices[indptr[u]:indptr[u + 1]], dtype=torch.long)] = -float("inf")
        out.append(scores.topk(k, dim=1).indices)
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------------------- callback
class TeacherCallback(Callback):
    """Provides the frozen teacher's outputs per training batch and adds the distillation term to the task's loss."""

    def __init__(self, teacher: nn.Module, family: str, loss: str, alpha: float, temperature: float,
                 topk_items: torch.Tensor | None = None, rank_lambda: float = 1.0) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.family, self.loss, self.alpha, self.temperature = family, loss, float(alpha), float(temperature)
        self.topk_items = topk_items
        self.weights = rank_weights(topk_items.shape[1], rank_lambda) if topk_items is not None else None
        self.teacher_logits: torch.Tensor | None = None
        self._hidden: torch.Tensor | None = None   # session models: the teacher's own GRU state
        self._term: Callable | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.teacher.to(pl_module.device)
        self._hidden = None
        self._term = self.term
        pl_module.extra_losses.append(self._term)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._term in pl_module.extra_losses:
            pl_module.extra_losses.remove(self._term)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._hidden = None

    @torch.no_grad()
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
                             ) -> None:
        self.teacher.eval()
        if self.loss == "ranking":
            self.teacher_logits = None
        elif self.family == "session":
            # session-parallel batches (inputs, targets, reset, negatives): the teacher carries its own GRU state,
            # zeroed where a new session starts, exactly like the student's task does
            inputs, _, reset = batch[:3]
            if self._hidden is None or self._hidden.shape[1] != len(inputs):
                self._hidden = self.teacher.init_hidden(len(inputs), inputs.device)
            hidden = self._hidden * (~reset).to(self._hidden.dtype)[None, :, None]
            h, self._hidden = self.teacher.step(inputs, hidden)
            self.teacher_logits = self.teacher.item_scores(h)
        else:  # ranking / ctr batches are (users-or-fields, items-or-fields, labels, ...)
            self.teacher_logits = self.teacher(*batch[:2])

    def term(self, task: L.LightningModule, batch: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        """Extra loss such that task loss + term = the distillation objective (the task already adds its own loss).

        ``out`` is what the task passes: logits for ranking / ctr, output states h for session models.
        """
        if self.family == "session":
            from recsys.tasks.session import sampled_loss

            inputs, targets, _, negatives = batch[:4]
            base = sampled_loss(task.model, out, targets, negatives, task.loss_name, task.bpreg, task.logq,
                                task.log_pop)
            logits = task.model.item_scores(out)
            total = (1 - self.alpha) * base + self.alpha * softmax_kl(logits, self.teacher_logits, self.temperature)
            return total - base
        target = batch[2]
        base = task.loss_fn(out, target)
        if self.loss == "ranking":
            users = batch[0][target > 0.5].unique()
            items = self.topk_items.to(users.device)[users]
            s = task.model(users[:, None].expand_as(items).reshape(-1), items.reshape(-1)).view(items.shape)
            total = (1 - self.alpha) * base + self.alpha * ranking_distill_loss(s, self.weights.to(s.device))
        else:
            total = pointwise_kd_loss(out, self.teacher_logits, target.float(), self.alpha, self.temperature)
        return total - base


# ------------------------------------------------------------------------------------------------------ teacher I/O
def load_teacher(ref: str, cfg: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher named by ``distill.teacher``: an artifact path, or an MLflow run id (its logged dense artifact)."""
    from recsys.export.artifact import artifact_meta, load_artifact

    path = Path(str(ref)).expanduser()
    if path.exists():
        return load_artifact(path), dict(artifact_meta(path))
    if RUN_ID.match(str(ref)):
        # Resolving a run id is I/O at the edge of the technique (the rest of the module never touches MLflow).
        from mlflow.tracking import MlflowClient

        client = MlflowClient(str(cfg.tracking.uri))
        try:
            run = client.get_run(str(ref))
        except Exception as e:  # noqa: BLE001 - MLflow raises its own exception types
            raise ConfigError(f"distill.teacher={ref!r}: no MLflow run with this id in {cfg.tracking.uri} ({e})") from e
        local = client.download_artifacts(str(ref), "artifacts/dense.pt")
        return load_artifact(local), {"dataset_checksum": run.data.tags.get("dataset_checksum"),
                                      "model": run.data.tags.get("model")}
    raise ConfigError(f"distill.teacher={ref!r}: not an existing artifact file nor a 32-hex MLflow run id")


def check_teacher(teacher: nn.Module, meta: Mapping[str, Any], student_spec: Mapping[str, Any], checksum: str | None,
                  ref: str) -> None:
    """Fail before training when the teacher was trained on other data or is a model of another kind/shape."""
    tspec = teacher.config()
    if meta.get("dataset_checksum") and checksum and meta["dataset_checksum"] != checksum:
        raise ConfigError(f"distill.teacher={ref!r}: trained on data with checksum {meta['dataset_checksum'][:12]}…, "
                          f"this job's data has {checksum[:12]}… (same dataset and split required)")
    for key in ("n_users", "n_items"):
        if key in student_spec and tspec.get(key) != student_spec[key]:
            raise ConfigError(f"distill.teacher={ref!r}: teacher has {key}={tspec.get(key)}, this job's data has "
                              f"{student_spec[key]} (a checkpoint of another dataset)")
    t_family = getattr(teacher, "family", None)
    s_family = getattr(build_model(dict(student_spec)), "family", None)
    if t_family != s_family:
        raise ConfigError(f"distill.teacher={ref!r}: teacher is {tspec.get('_target_')} (family {t_family!r}), the "
                          f"student is {student_spec.get('_target_')} (family {s_family!r})")


# --------------------------------------------------------------------------------------------------------- technique
ALIASES = {"hidden": "hidden_size"}   # distill.student.hidden=32 reads as GRU4Rec's model.hidden_size


def student_overrides(student: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``distill.student`` keys that are set (null means: keep the teacher's value), aliases resolved."""
    out: dict[str, Any] = {}
    for k, v in (student or {}).items():
        if v is not None:
            key = ALIASES.get(k, k)
            if key in out and out[key] != v:
                raise ConfigError(f"distill.student.{k}={v!r} and distill.student.{key}={out[key]!r}: {k} is an alias "
                                  f"of {key}; give one of them")
            out[key] = v
    return out


def student_problems(model_cfg: Mapping[str, Any], student: Mapping[str, Any]) -> list[str]:
    """A student must override existing size keys of the model config with values no larger, and be smaller overall."""
    errs: list[str] = []
    student = student_overrides(student) if isinstance(student, Mapping) else student
    if not isinstance(student, Mapping) or not student:
        return [f"distill.student={student!r}: give at least one smaller size, e.g. distill.student.factors=8"]
    smaller = False
    for key, v in student.items():
        if key not in model_cfg:
            errs.append(f"distill.student.{key}={v!r}: model={model_cfg.get('name')!r} has no key {key!r} "
                        f"(its keys: {sorted(k for k in model_cfg if k not in ('name', 'task', '_target_'))})")
            continue
        t = model_cfg[key]
        if isinstance(t, bool) or isinstance(v, bool):
            continue
        if isinstance(t, (int, float)) and isinstance(v, (int, float)):
            if v > t:
                errs.append(f"distill.student.{key}={v}: larger than the teacher's model.{key}={t} "
                            "(a student must not be larger than its teacher)")
            smaller |= v < t
        elif isinstance(t, (list, tuple)) and isinstance(v, (list, tuple)):
            if len(v) > len(t) or any(a > b for a, b in zip(v, t)):
                errs.append(f"distill.student.{key}={list(v)}: larger than the teacher's model.{key}={list(t)} "
                            "(a student must not be larger than its teacher)")
            smaller |= len(v) < len(t) or any(a < b for a, b in zip(v, t))
    if not errs and not smaller:
        errs.append(f"distill.student={dict(student)}: not smaller than the teacher (model config) in any size")
    return errs


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
        model_cfg = {**OmegaConf.to_container(cfg.model, resolve=True), **student_overrides(self.cfg.get("student"))}
        spec = ctx.family.model_spec(model_cfg, ctx.data)
        teacher = self._teacher(ctx, spec)
        teacher = copy.deepcopy(teacher).eval()   # the callback's private frozen copy; ctx.dense stays untouched
        L.seed_everything(int(cfg.seed), workers=True)
        student = build_model(spec)
        init = copy.deepcopy(student.state_dict())
        t_params, s_params = count_params(teacher)["params_total"], count_params(student)["params_total"]
        if s_params >= t_params:
            raise ConfigError(f"distill.student={student_overrides(self.cfg.get('student'))}: student has {s_params:,} "
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
