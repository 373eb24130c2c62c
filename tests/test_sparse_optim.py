"""Row-wise embedding updates (train.sparse): which rows move, the config choices, and a real fit through the task."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from recsys.models.ncf import NeuMF
from recsys.tasks.optim import SparseDenseAdam, build_sparse_adam, resolve_sparse, sparse_embeddings


def _step(model, opt, users, items, labels):
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(users, items), labels)
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_sparse_adam_touches_only_the_rows_in_the_batch_and_dense_adam_moves_all():
    torch.manual_seed(0)
    model = NeuMF(50, 40, factors=4, mlp_layers=[8, 4])
    opt, embs = build_sparse_adam(model, lr=0.01)
    assert len(embs) == 4 and all(m.sparse for m in embs)
    assert isinstance(opt, SparseDenseAdam)
    u, i, y = torch.tensor([1, 2, 3]), torch.tensor([5, 6, 7]), torch.tensor([1.0, 0.0, 1.0])
    before = model.gmf.user_embedding.weight.detach().clone()
    tower_before = model.mlp.tower[1].weight.detach().clone()
    _step(model, opt, u, i, y)
    _step(model, opt, torch.tensor([4]), torch.tensor([8]), torch.tensor([1.0]))
    assert model.gmf.user_embedding.weight.grad.is_sparse
    after = model.gmf.user_embedding.weight.detach()
    moved = torch.nonzero((after != before).any(dim=1)).flatten().tolist()
    assert moved == [1, 2, 3, 4]                       # lazy: rows 1-3 not moved again by step 2's momentum...
    assert not torch.equal(model.mlp.tower[1].weight, tower_before)   # dense layers train as usual
    # ...whereas dense Adam moves rows 1-3 in step 2 too (momentum), although they were not in that batch
    torch.manual_seed(0)
    ref = NeuMF(50, 40, factors=4, mlp_layers=[8, 4])
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    _step(ref, ref_opt, u, i, y)
    row1 = ref.gmf.user_embedding.weight[1].detach().clone()
    _step(ref, ref_opt, torch.tensor([4]), torch.tensor([8]), torch.tensor([1.0]))
    assert not torch.equal(ref.gmf.user_embedding.weight[1], row1)
    # first step agrees with dense Adam (same moments and bias correction; SparseAdam adds eps after the bias
    # correction of v, so with steps of lr = 0.01 the rows differ by ~1e-5, not more)
    torch.manual_seed(0)
    a, b = NeuMF(50, 40, factors=4, mlp_layers=[8, 4]), NeuMF(50, 40, factors=4, mlp_layers=[8, 4])
    b.load_state_dict(a.state_dict())
    opt_a, _ = build_sparse_adam(a, lr=0.01)
    _step(a, opt_a, u, i, y)
    _step(b, torch.optim.Adam(b.parameters(), lr=0.01), u, i, y)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-4), n


def test_sparse_sgd_is_the_same_math_as_dense_sgd():
    a, b = _twins()
    opt_a, _ = build_sparse_adam(a, lr=0.1, optimizer="sgd")
    _assert_same_steps(a, opt_a, b, torch.optim.SGD(b.parameters(), lr=0.1), steps=3, atol=1e-7)


def _twins() -> tuple[NeuMF, NeuMF]:
    """Two small NeuMF models with the same weights."""
    torch.manual_seed(0)
    a, b = NeuMF(30, 20, factors=4, mlp_layers=[8, 4]), NeuMF(30, 20, factors=4, mlp_layers=[8, 4])
    b.load_state_dict(a.state_dict())
    return a, b


def _assert_same_steps(a, opt_a, b, opt_b, steps: int, atol: float) -> None:
    """Train both on the same batches; every parameter must stay within ``atol``."""
    for k in range(steps):
        u, i, y = torch.tensor([k, k + 1, 5]), torch.tensor([2, k, 7]), torch.tensor([1.0, 0.0, 1.0])
        _step(a, opt_a, u, i, y)
        _step(b, opt_b, u, i, y)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=atol), n


def test_resolve_sparse_choices_and_errors():
    model = NeuMF(10, 10, factors=2, mlp_layers=[4, 2])
    assert resolve_sparse("auto", "adam", 0.0, model) == "rowwise"
    assert resolve_sparse("auto", "sgd", 0.0, model) == "sparse"   # plain SGD: sparse == dense math
    assert resolve_sparse("auto", "adagrad", 0.0, model) == ""
    assert resolve_sparse("auto", "adam", 1e-4, model) == ""
    assert resolve_sparse(False, "adam", 0.0, model) == ""
    assert resolve_sparse(True, "adam", 0.0, model) == "sparse"
    assert resolve_sparse("rowwise_lazy", "adam", 0.0, model) == "rowwise_lazy"
    with pytest.raises(ValueError, match="train.sparse=true needs train.optimizer=adam or sgd"):
        resolve_sparse("true", "adagrad", 0.0, model)
    with pytest.raises(ValueError, match="train.sparse=rowwise needs train.optimizer=adam "):
        resolve_sparse("rowwise", "sgd", 0.0, model)
    with pytest.raises(ValueError, match="is not one of"):
        resolve_sparse("yes", "adam", 0.0, model)
    from torch.nn.utils import prune
    prune.l1_unstructured(model.gmf.user_embedding, "weight", amount=0.5)
    assert model.gmf.user_embedding not in sparse_embeddings(model)   # pruned tables keep dense gradients


def test_sparse_fit_learns_and_gives_the_model_back_dense(tmp_path):
    from recsys.data.datamodule import RankingDataModule
    from recsys.tasks.fit import fit
    from recsys.tasks.ranking import RankingTask

    split = _tiny_split()
    results, weights = {}, {}
    for sparse in ("false", "true", "rowwise", "scatter"):
        torch.manual_seed(0)
        model = NeuMF(split.n_users, split.n_items, factors=8, mlp_layers=[16, 8])
        task = RankingTask(model, lr=0.01, stage="dense", sparse=sparse)
        dm = RankingDataModule(split, batch_size=128, num_negatives=4, seed=0, eval_batch_users=256)
        info = fit(task, dm, 4, {"enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu"},
                   ckpt_dir=str(tmp_path / sparse), monitor="dense/epoch_val_hr_at_10")
        assert not any(m.sparse for m in sparse_embeddings(model))
        results[sparse], weights[sparse] = info["best_val"], model.state_dict()
    # a popularity-driven toy: both paths learn it well above chance (10 of 50 candidates = 0.20)
    assert results["false"] > 0.4 and results["true"] > 0.4, results
    assert results["true"] >= results["false"] - 0.05, results
    assert results["rowwise"] >= results["false"] - 0.05, results
    # scatter: dense Adam's steps through the whole fit (gradients built in kept buffers), the same weights
    assert results["scatter"] == results["false"]
    for k, v in weights["false"].items():
        assert torch.equal(weights["scatter"][k], v), k


def test_scatter_adam_takes_dense_fused_adams_exact_steps_with_duplicates_and_absent_rows():
    """ScatterAdam: bit-identical to dense fused Adam, including duplicate ids in a batch (summed in order), rows
    absent from a step (zeroed, not carried) and a step where a table is not read at all."""
    from recsys.tasks.optim import ScatterAdam, fused_adam

    a, b = _twins()
    opt_a, embs = build_sparse_adam(a, lr=0.01, mode="scatter")
    assert isinstance(opt_a, ScatterAdam) and all(m.sparse for m in embs)
    opt_b = fused_adam(list(b.parameters()), lr=0.01)
    g = torch.Generator().manual_seed(3)
    for k in range(12):
        u = torch.randint(0, 30, (40,), generator=g) if k % 4 else torch.full((40,), 7)   # every 4th: one user only
        i = torch.randint(0, 20, (40,), generator=g)
        y = (torch.rand(40, generator=g) < 0.3).float()
        _step(a, opt_a, u, i, y)
        _step(b, opt_b, u, i, y)
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(p, q), (k, n)
    # a step that reads only the MLP's tables: the GMF tables get no gradient, and both optimizers skip them
    for opt, m in ((opt_a, a), (opt_b, b)):
        opt.zero_grad()
        m.mlp.vector(torch.tensor([1, 2]), torch.tensor([3, 3])).sum().backward()
        opt.step()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    state = opt_a.state_dict()   # the inner Adam's state: moments of every parameter, tables included
    assert len(state["state"]) == len(list(a.parameters()))


def _tiny_split():
    """Popularity-skewed toy data: every user's validation and test items are drawn from the same skewed law as train."""
    from recsys.data.sampling import csr_from_pairs, sample_eval_negatives
    from recsys.data.splits import ImplicitSplit

    rng = np.random.default_rng(0)
    n_users, n_items = 120, 300
    p = 1.0 / np.arange(1, n_items + 1) ** 1.2
    p /= p.sum()
    users, items = [], []
    for u in range(n_users):
        its = rng.choice(n_items, size=22, replace=False, p=p)
        users += [u] * 22
        items += list(its)
    users, items = np.array(users), np.array(items)
    last = np.arange(n_users) * 22
    val_i, test_i = items[last + 20], items[last + 21]
    keep = np.ones(len(users), bool)
    keep[last + 20] = keep[last + 21] = False
    ev_users = np.arange(n_users)
    indptr, indices = csr_from_pairs(users, items, n_users)
    negs = sample_eval_negatives(ev_users, indptr, indices, n_items, 49, rng)
    return ImplicitSplit(n_users, n_items, users[keep], items[keep], ev_users, val_i, ev_users, test_i, negs, negs,
                         np.arange(n_users), np.arange(n_items), name="toy")


def test_auto_keeps_dense_updates_where_a_batch_hits_many_rows():
    from omegaconf import OmegaConf

    from recsys.tasks.ranking import RankingFamily

    ml1m = NeuMF(6040, 3706, factors=32, mlp_layers=[128, 64, 32])
    cfg = lambda bs, s="auto": OmegaConf.create({"train": {"sparse": s, "batch_size": bs}})  # noqa: E731
    assert RankingFamily._sparse_setting(cfg(256), ml1m) == "auto"
    assert RankingFamily._sparse_setting(cfg(2048), ml1m) == "scatter"     # ~40 % of the rows per batch: dense Adam
    assert RankingFamily._sparse_setting(cfg(2048), ml1m, optimizer="sgd") == "false"
    assert RankingFamily._sparse_setting(cfg(2048, True), ml1m) is True    # an explicit choice is kept
    ml20m = NeuMF(138_493, 26_744, factors=32, mlp_layers=[128, 64, 32])
    assert RankingFamily._sparse_setting(cfg(2048), ml20m) == "auto"


def test_adam_is_torch_fused_adam_with_the_same_steps_as_the_loop():
    """train.optimizer=adam builds torch's fused Adam (the fast CPU kernel); adam_loop torch's CPU default; both take
    the same steps up to float rounding."""
    from recsys.tasks.ranking import RankingTask

    a, b = _twins()
    opt_a = RankingTask(a, lr=0.01, optimizer="adam").configure_optimizers()
    opt_b = RankingTask(b, lr=0.01, optimizer="adam_loop").configure_optimizers()
    assert opt_a.defaults["fused"] is True and not opt_b.defaults["fused"]
    _assert_same_steps(a, opt_a, b, opt_b, steps=5, atol=1e-6)


def test_lean_fused_adam_takes_torch_fused_adams_exact_steps():
    """LeanFusedAdam (train.optimizer=adam) calls torch's fused kernel directly after the first step: bit-identical
    to torch.optim.Adam(fused=True) through weight decay, an lr change, a step where a parameter has no gradient,
    and a state_dict reload."""
    from recsys.tasks.optim import LeanFusedAdam

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    b = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    b.load_state_dict(a.state_dict())
    opt_a = LeanFusedAdam(a.parameters(), lr=0.01, weight_decay=1e-3, fused=True)
    opt_b = torch.optim.Adam(b.parameters(), lr=0.01, weight_decay=1e-3, fused=True)
    g = torch.Generator().manual_seed(3)
    for k in range(12):
        x = torch.randn(8, 6, generator=g)
        if k == 5:
            for o in (opt_a, opt_b):
                o.param_groups[0]["lr"] = 0.003
        if k == 8:   # reload (new state tensors): the fast path must drop its cached lists
            opt_a.load_state_dict(copy.deepcopy(opt_a.state_dict()))
        for m, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            if k == 6:   # the last layer's bias gets no gradient on this step
                m[2].bias.grad = None
            o.step()
    assert opt_a._lean is not None   # the fast path was taken
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(a.parameters(), b.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_a.state[p][key], opt_b.state[q][key]), key


def test_neumf_fit_with_scatter_adam_takes_the_hand_written_steps_and_autograds_weights(tmp_path):
    """Under ScatterAdam each NeuMF training step comes from NeuMF.bce_gradients (counted), and the fit ends with the
    weights autograd's steps give (RankingTask.hand_gradients=False), bit for bit; with a loss term added (as
    distillation adds one) the step goes back to autograd."""
    from recsys.data.datamodule import RankingDataModule
    from recsys.tasks.fit import fit
    from recsys.tasks.ranking import RankingTask

    split = _tiny_split()
    weights, calls = {}, {}
    for name in ("hand", "autograd", "extra loss"):
        torch.manual_seed(0)
        model = NeuMF(split.n_users, split.n_items, factors=8, mlp_layers=[16, 8])
        counted = model.bce_gradients
        calls[name] = []
        model.bce_gradients = lambda *a, _c=calls[name], _f=counted: _c.append(1) or _f(*a)
        task = RankingTask(model, lr=0.01, stage="dense", sparse="scatter")
        task.hand_gradients = name != "autograd"
        if name == "extra loss":
            task.extra_losses.append(lambda t, batch, out: 0.0 * out.sum())
        dm = RankingDataModule(split, batch_size=128, num_negatives=4, seed=0, eval_batch_users=256)
        fit(task, dm, 2, {"enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu"},
            ckpt_dir=str(tmp_path / name), monitor="dense/epoch_val_hr_at_10")
        weights[name] = model.state_dict()
        steps = task.trainer.global_step
    assert len(calls["hand"]) == steps > 0 and not calls["autograd"] and not calls["extra loss"], (calls, steps)
    for k, v in weights["autograd"].items():
        assert torch.equal(weights["hand"][k], v), k
