"""Knowledge distillation: loss values by hand, the teacher frozen and never shipped, bad students/teachers fail early."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from recsys import checks
from recsys.compress.base import CompressContext, configured
from recsys.compress.distill import (
    check_teacher,
    pointwise_kd_loss,
    rank_weights,
    ranking_distill_loss,
    softmax_kd_loss,
    softmax_kl,
    teacher_topk,
)
from recsys.compress.distill.callback import TeacherCallback
from recsys.data.splits import ImplicitSplit
from recsys.errors import ConfigError
from recsys.export.artifact import load_artifact, save_artifact
from recsys.export.formats import artifact_format
from recsys.models import build_model
from recsys.models.ncf import GMF
from recsys.tasks.fit import StageTrainer
from recsys.tasks.ranking import FAMILY, RankingTask

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def cfg_for(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[f"paths.root_dir={tmp_path}", f"paths.data_dir={tmp_path}",
                                            "train.epochs=1", "train.batch_size=256",
                                            "trainer.enable_progress_bar=false", "eval.batch_users=64", *overrides])


def synthetic_split(n_users: int = 40, n_items: int = 60, per_user: int = 8, n_neg: int = 20) -> ImplicitSplit:
    """A tiny split: each user has `per_user` train items, one val and one test item, and sampled negatives."""
    g = np.random.default_rng(0)
    tu, ti, vu, vi, su, si, vn, sn = [], [], [], [], [], [], [], []
    for u in range(n_users):
        items = g.choice(n_items, per_user + 2 + 2 * n_neg, replace=False)
        tu += [u] * per_user
        ti += list(items[:per_user])
        vu.append(u), vi.append(items[per_user]), su.append(u), si.append(items[per_user + 1])
        vn.append(items[per_user + 2:per_user + 2 + n_neg]), sn.append(items[per_user + 2 + n_neg:])
    a = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return ImplicitSplit(n_users=n_users, n_items=n_items, train_users=a(tu), train_items=a(ti), val_users=a(vu),
                         val_items=a(vi), test_users=a(su), test_items=a(si), val_negatives=a(vn), test_negatives=a(sn),
                         user_ids=np.arange(n_users), item_ids=np.arange(n_items), name="synthetic", checksum="c" * 64)


# -------------------------------------------------------------------------------------------------- loss values
def test_pointwise_kd_loss_equals_hand_computed_value():
    s, t, y = [0.5, -1.0], [2.0, 0.0], [1.0, 0.0]
    alpha, temp = 0.3, 2.0
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    bce = lambda p, q: -(q * math.log(p) + (1 - q) * math.log(1 - p))  # noqa: E731
    hard = sum(bce(sig(a), b) for a, b in zip(s, y)) / 2
    soft = sum(bce(sig(a / temp), sig(b / temp)) for a, b in zip(s, t)) / 2
    expected = (1 - alpha) * hard + alpha * temp ** 2 * soft
    got = pointwise_kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha, temp)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_softmax_kd_loss_equals_hand_computed_value():
    s, t, y = [[1.0, 0.0, -1.0]], [[0.0, 2.0, 0.0]], [1]
    alpha, temp = 0.5, 2.0
    soft = lambda v: [math.exp(x / temp) / sum(math.exp(z / temp) for z in v) for x in v]  # noqa: E731
    ps, pt = soft(s[0]), soft(t[0])
    kl = sum(q * math.log(q / p) for p, q in zip(ps, pt))
    ce = -math.log(math.exp(s[0][1]) / sum(math.exp(x) for x in s[0]))
    expected = (1 - alpha) * ce + alpha * temp ** 2 * kl
    got = softmax_kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha, temp)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_ranking_distill_loss_weights_positions():
    w = rank_weights(3, lam=1.0)
    expected_w = [math.exp(-r) for r in (1, 2, 3)]
    assert w.tolist() == pytest.approx([x / sum(expected_w) for x in expected_w])
    logits = torch.tensor([[0.0, 1.0, -1.0]])
    expected = -sum(wi * math.log(1 / (1 + math.exp(-x))) for wi, x in zip(w.tolist(), [0.0, 1.0, -1.0]))
    assert ranking_distill_loss(logits, w).item() == pytest.approx(expected, rel=1e-6)


def test_callback_term_turns_task_loss_into_kd_objective():
    """task loss + registered term == (1-a) BCE + a T^2 BCE_soft on a tiny batch; the callback unregisters itself."""
    torch.manual_seed(0)
    teacher, student = GMF(5, 7, 4), GMF(5, 7, 2)
    task = RankingTask(student)
    cb = TeacherCallback(teacher, "ranking", "kd", alpha=0.4, temperature=3.0)
    cb.on_fit_start(None, task)
    batch = (torch.tensor([0, 1, 2, 4]), torch.tensor([1, 3, 6, 0]), torch.tensor([1.0, 0.0, 0.0, 1.0]))
    cb.on_train_batch_start(None, task, batch, 0)
    logits = student(*batch[:2])
    total = task.loss_fn(logits, batch[2]) + sum(term(task, batch, logits) for term in task.extra_losses)
    expected = pointwise_kd_loss(logits, teacher(*batch[:2]), batch[2], 0.4, 3.0)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    cb.on_fit_end(None, task)
    assert task.extra_losses == []


def test_teacher_topk_skips_observed_items():
    teacher = GMF(3, 10, 4)
    indptr, indices = np.array([0, 2, 2, 3]), np.array([1, 5, 9])
    top = teacher_topk(teacher, 3, (indptr, indices), k=4)
    assert top.shape == (3, 4)
    assert not {1, 5} & set(top[0].tolist()) and 9 not in top[2].tolist()
    full = teacher.score_all(torch.tensor([1]))[0]
    assert top[1].tolist() == full.topk(4).indices.tolist()


# ------------------------------------------------------------------------------- training with the pipeline's helpers
@pytest.mark.parametrize("model,student", [
    ("gmf", ["distill.student.factors=4"]),
    ("mlp", ["distill.student.factors=null", "model.layers=[16,8]", "distill.student.layers=[8,4]"]),
    ("neumf", ["model.mlp_layers=[16,8]", "distill.student.factors=4", "distill.student.mlp_layers=[8,4]"]),
])
@pytest.mark.parametrize("method", ["kd", "ranking"])
def test_distillation_trains_student_leaves_teacher_untouched_and_unshipped(tmp_path, model, student, method):
    cfg = cfg_for(tmp_path, f"model={model}", f"distill={method}", "distill.baseline=true", *student)
    checks.validate(_plain(cfg))
    data = synthetic_split()
    torch.manual_seed(0)
    teacher = build_model(FAMILY.model_spec(_plain(cfg)["model"], data))
    before = copy.deepcopy(teacher.state_dict())
    ctx = CompressContext(cfg=cfg, data=data, family=FAMILY, dense=teacher, trainer=StageTrainer(FAMILY, data, cfg))
    (tech,) = configured(_plain(cfg))
    out = tech.apply(copy.deepcopy(teacher), ctx)
    out = tech.finalize(out, ctx)
    # the teacher (ctx.dense) is bit-identical, and the callback's copy had no trainable parameter
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    cb = tech.callbacks(ctx)[0]
    assert not any(p.requires_grad for p in cb.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in cb.teacher.state_dict().items())
    # the student is smaller, trained, and its artifact holds the student alone
    assert ctx.metrics["student_params"] < ctx.metrics["teacher_params"]
    assert "nokd_hr_at_10" in ctx.metrics and 0.0 <= ctx.metrics["nokd_hr_at_10"] <= 1.0
    path = tmp_path / "student.pt"
    save_artifact(out, path, fmt=artifact_format(out))
    blob = torch.load(path, weights_only=True)
    n_saved = sum(t.numel() for t in blob["payload"].values())
    assert n_saved == ctx.metrics["student_params"] < ctx.metrics["teacher_params"]
    assert not any(p is q for p in out.parameters() for q in teacher.parameters())
    reloaded = load_artifact(path)
    u, i = FAMILY.example_inputs(data, 64)
    assert torch.equal(reloaded.score(u, i), out.eval().score(u, i))


def _plain(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


# ----------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides,needle", [
    (["distill=kd", "distill.student.factors=16"], "distill.student.factors=16: larger than the teacher"),
    (["distill=kd", "model=mlp", "distill.student.factors=4"], "model='mlp' has no key 'factors'"),
    (["distill=kd"], "give at least one smaller size"),
    (["distill=kd", "distill.student.factors=8"], "not smaller than the teacher"),
    (["distill=kd", "distill.student.factors=8", "distill.student.mlp_layers=[128,8]"],
     "distill.student.mlp_layers=[128, 8]: larger"),
    (["distill=kd", "distill.student.hidden_size=4"], "has no key 'hidden_size'"),
    (["distill=kd", "distill.alpha=1.5"], "distill.alpha=1.5"),
    (["distill=kd", "distill.teacher=/no/such/file.pt"], "distill.teacher='/no/such/file.pt'"),
    (["distill=ranking", "distill.topk=0"], "distill.topk=0"),
])
def test_bad_distill_config_fails_before_training(tmp_path, overrides, needle):
    with pytest.raises(ConfigError) as e:
        checks.validate(_plain(cfg_for(tmp_path, *overrides)))
    assert needle in str(e.value)


def test_teacher_checkpoint_of_other_data_or_model_is_rejected(tmp_path):
    student_spec = GMF(40, 60, 4).config()
    with pytest.raises(ConfigError, match="n_items=61"):
        check_teacher(GMF(40, 61, 8), {}, student_spec, "c" * 64, "t.pt")
    with pytest.raises(ConfigError, match="checksum"):
        check_teacher(GMF(40, 60, 8), {"dataset_checksum": "d" * 64}, student_spec, "c" * 64, "t.pt")
    check_teacher(GMF(40, 60, 8), {"dataset_checksum": "c" * 64}, student_spec, "c" * 64, "t.pt")


def test_explicit_teacher_artifact_is_loaded_and_checked(tmp_path):
    """distill.teacher=<artifact of another dataset> fails in apply, before the student is trained."""
    path = tmp_path / "teacher.pt"
    save_artifact(GMF(40, 99, 8), path, meta={"dataset_checksum": "c" * 64})
    cfg = cfg_for(tmp_path, "model=gmf", "distill=kd", "distill.student.factors=4", f"distill.teacher={path}")
    checks.validate(_plain(cfg))
    data = synthetic_split()
    trained = []
    class Recording:   # a trainer that only records which stages were asked for
        def train(self, model, stage, **kw):
            trained.append(stage)
            return {}

        def evaluate(self, model):
            return {}

    ctx = CompressContext(cfg=cfg, data=data, family=FAMILY, dense=GMF(40, 60, 8), trainer=Recording())
    (tech,) = configured(_plain(cfg))
    with pytest.raises(ConfigError, match="n_items=99"):
        tech.apply(GMF(40, 60, 8), ctx)
    assert trained == []


@pytest.mark.realdata
def test_pipeline_distill_then_lowrank_logs_student_and_nokd_twin(tmp_path, shared_data_dir):
    """One Hydra-composed job on ml-100k: KD student (with its no-KD twin), then SVD of the student, shipped + reloaded."""
    from mlflow.tracking import MlflowClient

    from recsys.pipeline import run

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            f"paths.root_dir={tmp_path}", f"paths.data_dir={shared_data_dir}", "data=ml-100k", "train.epochs=1",
            "train.batch_size=16384", "model.factors=8", "model.mlp_layers=[16,8]", "distill=kd",
            "distill.student.factors=4", "distill.student.mlp_layers=[8,4]", "lowrank=svd", "lowrank.rank=2",
            "finetune.epochs=0", "bench.requests=50", "bench.warmup=5", "bench.full_catalogue_requests=3",
            "bench.throughput_repeats=2", "bench.throughput_batch=512", "trainer.enable_progress_bar=false",
            "eval.full_ranking=false", "tracking.log_model=false"])
    run(cfg)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    (r,) = client.search_runs([client.get_experiment_by_name("recsys-compress").experiment_id])
    m = r.data.metrics
    assert r.data.tags["artifact_format"] == "lowrank"
    assert 0.0 < m["final/nokd_hr_at_10"] <= 1.0 and 0.0 < m["final/hr_at_10"] <= 1.0
    assert m["final/student_params"] < m["final/teacher_params"] == m["dense/params_total"]
    # shipped artifact = the factorised student: fewer parameters than even the unfactorised student
    assert m["final/params_total"] < m["final/student_params"]
    assert m["final/artifact_bytes"] < m["dense/artifact_bytes"]
    assert len(client.get_metric_history(r.info.run_id, "distill/epoch_train_loss")) == 1
    assert len(client.get_metric_history(r.info.run_id, "student_nokd/epoch_train_loss")) == 1


def test_session_kd_term_is_softmax_kd_over_items_with_the_teachers_own_state():
    """GRU4Rec: task loss + term == (1-a) sampled loss + a T^2 KL over all items; teacher state resets per session."""
    from recsys.models.gru4rec import GRU4Rec
    from recsys.tasks.session import SessionTask, sampled_loss

    torch.manual_seed(0)
    teacher, student = GRU4Rec(12, hidden_size=8), GRU4Rec(12, hidden_size=4)
    task = SessionTask(student, loss="cross-entropy")
    cb = TeacherCallback(teacher, "session", "kd", alpha=0.25, temperature=2.0)
    cb.on_fit_start(None, task)
    t_hidden = teacher.init_hidden(3)
    for step, reset in enumerate(([True, True, True], [False, True, False])):
        batch = (torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]), torch.tensor(reset), torch.tensor([7, 8]))
        cb.on_train_batch_start(None, task, batch, step)
        t_h, t_hidden = teacher.step(batch[0], t_hidden * (~batch[2]).float()[None, :, None])
        h, _ = student.step(batch[0], student.init_hidden(3))
        base = sampled_loss(student, h, batch[1], batch[3], task.loss_name, task.bpreg, task.logq, task.log_pop)
        total = base + cb.term(task, batch, h)
        expected = 0.75 * base + 0.25 * softmax_kl(student.item_scores(h), teacher.item_scores(t_h), 2.0)
        assert torch.allclose(cb.teacher_logits, teacher.item_scores(t_h))
        assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    cb.on_fit_end(None, task)
    assert task.extra_losses == []


def test_ctr_kd_term_is_pointwise_kd():
    """DeepFM (table mode: categorical + dense fields) in the CTR task: the same pointwise soft-label objective."""
    from recsys.models.deepfm import DeepFM
    from recsys.tasks.ctr import CTRTask

    torch.manual_seed(0)
    kw = dict(field_dims=[5, 7], n_dense=2)
    teacher, student = DeepFM(embed_dim=8, mlp_layers=[16], **kw), DeepFM(embed_dim=4, mlp_layers=[8], **kw)
    task = CTRTask(student)
    cb = TeacherCallback(teacher, "ctr", "kd", alpha=0.6, temperature=1.5)
    cb.on_fit_start(None, task)
    batch = (torch.tensor([[0, 1], [4, 6], [2, 0]]), torch.randn(3, 2), torch.tensor([1.0, 0.0, 1.0]))
    cb.on_train_batch_start(None, task, batch, 0)
    logits = student(*batch[:2])
    total = task.loss_fn(logits, batch[2]) + cb.term(task, batch, logits)
    expected = pointwise_kd_loss(logits, teacher(*batch[:2]), batch[2], 0.6, 1.5)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_student_hidden_is_an_alias_of_hidden_size():
    from recsys.compress.distill import student_overrides

    gru = {"name": "gru4rec", "_target_": "recsys.models.gru4rec.GRU4Rec", "hidden_size": 64}
    assert student_overrides({"hidden": 32, "factors": None}, gru) == {"hidden_size": 32}
    assert student_overrides({"hidden": 32, "hidden_size": 32}, gru) == {"hidden_size": 32}
    with pytest.raises(ConfigError, match="alias of hidden_size"):
        student_overrides({"hidden": 32, "hidden_size": 16}, gru)
    # the alias is GRU4Rec's own (its STUDENT_ALIASES), not a table in compress/: NeuMF has no key "hidden"
    assert student_overrides({"hidden": 32}, {"name": "neumf"}) == {"hidden": 32}
