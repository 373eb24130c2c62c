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

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError
from recsys.models import build_model, model_class

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


# ------------------------------------------------------------------------------------------------------- student
def student_overrides(student: Mapping[str, Any] | None, model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``distill.student`` keys that are set (null means: keep the teacher's value), with the model's own aliases
    (``STUDENT_ALIASES`` of its class, e.g. GRU4Rec's ``hidden`` for ``hidden_size``) resolved."""
    aliases = getattr(model_class(dict(model_cfg)), "STUDENT_ALIASES", {})
    out: dict[str, Any] = {}
    for k, v in (student or {}).items():
        if v is not None:
            key = aliases.get(k, k)
            if key in out and out[key] != v:
                raise ConfigError(f"distill.student.{k}={v!r} and distill.student.{key}={out[key]!r}: {k} is an alias "
                                  f"of {key}; give one of them")
            out[key] = v
    return out


def student_problems(model_cfg: Mapping[str, Any], student: Mapping[str, Any]) -> list[str]:
    """A student must override existing size keys of the model config with values no larger, and be smaller overall."""
    errs: list[str] = []
    student = student_overrides(student, model_cfg) if isinstance(student, Mapping) else student
    if not isinstance(student, Mapping) or not student:
        return [f"distill.student={student!r}: give at least one smaller size, e.g. distill.student.factors=8"]
    smaller = False
    size_keys = getattr(model_class(dict(model_cfg)), "STUDENT_KEYS", None)
    for key, v in student.items():
        if size_keys is not None and key in model_cfg and key not in size_keys:
            errs.append(f"distill.student.{key}={v!r}: not a size of model={model_cfg.get('name')!r} "
                        f"(its student sizes: {list(size_keys)})")
            continue
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
