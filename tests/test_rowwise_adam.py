"""RowwiseAdam (train.sparse=rowwise): dense Adam's math while touching only the batch's rows, the lazy variant, the
state_dict round trip, and a short fit on real data."""
from __future__ import annotations

import pytest
import torch

from recsys.models.ncf import NeuMF
from recsys.tasks.optim import build_sparse_adam


def _twins(dtype=torch.float64) -> tuple[NeuMF, NeuMF]:
    torch.manual_seed(0)
    a = NeuMF(30, 20, factors=4, mlp_layers=[8, 4]).to(dtype)
    b = NeuMF(30, 20, factors=4, mlp_layers=[8, 4]).to(dtype)
    b.load_state_dict(a.state_dict())
    return a, b


def _train(pairs, steps: int, batch: int = 5, seed: int = 1) -> None:
    """The same random batches (ids int32 or int64, rows absent for many steps) through each (model, optimizer)."""
    g = torch.Generator().manual_seed(seed)
    for k in range(steps):
        u, i = torch.randint(0, 30, (batch,), generator=g), torch.randint(0, 20, (batch,), generator=g)
        y = (torch.rand(batch, generator=g) > 0.5).double()
        if k % 2:
            u, i = u.int(), i.int()
        for m, o in pairs:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(m(u, i), y.to(next(m.parameters()).dtype))
            o.zero_grad()
            loss.backward()
            o.step()


def _max_diff(a, b) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def test_rowwise_adam_equals_dense_adam_after_catch_up():
    """Rows absent for many steps get dense Adam's momentum moves (closed form) before they are read again and at
    flush(): the same weights as torch's Adam, up to the eps term and float32 rounding (eps=1e-12 here)."""
    a, b = _twins(torch.float32)
    opt_a, embs = build_sparse_adam(a, lr=0.01, mode="rowwise")
    opt_a.param_groups[0]["eps"] = opt_a.dense.param_groups[0]["eps"] = 1e-12
    opt_b = torch.optim.Adam(b.parameters(), lr=0.01, eps=1e-12)
    before = a.gmf.user_embedding.weight.detach().clone()
    _train([(a, opt_a), (b, opt_b)], steps=1)
    touched = (a.gmf.user_embedding.weight != before).any(1).sum().item()
    assert 1 <= touched <= 5                                      # a step writes only the batch's rows...
    _train([(a, opt_a), (b, opt_b)], steps=40, seed=2)
    a(torch.arange(30), torch.arange(30) % 20)   # a training-mode lookup with no step after it (every row caught
    _train([(a, opt_a), (b, opt_b)], steps=40, seed=3)   # up, moments left unsettled), then more steps
    assert _max_diff(a, b) > 1e-4                                 # ...so absent rows lag until caught up
    opt_a.flush()
    assert _max_diff(a, b) < 2e-5
    assert all(m.sparse for m in embs)
    for p in opt_a.tables:   # moments too: the decay the catch-ups left to a row's next step is applied by flush
        q = dict(a.named_parameters())
        twin = dict(b.named_parameters())[next(n for n, x in q.items() if x is p)]
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt_a.state[p][key], opt_b.state[twin][key], rtol=1e-4, atol=1e-9)


def test_lazy_rows_stay_put_and_dense_layers_train():
    a, _ = _twins(torch.float32)
    opt, _ = build_sparse_adam(a, lr=0.01, mode="rowwise_lazy")
    w = a.gmf.user_embedding.weight
    _train([(a, opt)], steps=1)
    snap, tower = w.detach().clone(), a.mlp.tower[1].weight.detach().clone()
    u, i = torch.tensor([29]), torch.tensor([3])
    loss = torch.nn.functional.binary_cross_entropy_with_logits(a(u, i), torch.ones(1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    opt.flush()   # a no-op for the lazy variant
    moved = torch.nonzero((w != snap).any(1)).flatten().tolist()
    assert moved == [29]
    assert not torch.equal(a.mlp.tower[1].weight, tower)


def test_state_dict_round_trip_continues_identically():
    a, b = _twins(torch.float32)
    opt_a, _ = build_sparse_adam(a, lr=0.01, mode="rowwise")
    _train([(a, opt_a)], steps=20)
    import io

    buf = io.BytesIO()
    torch.save(opt_a.state_dict(), buf)   # as a checkpoint holds it; state_dict() flushes: every row up to date
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    b.load_state_dict(a.state_dict())
    opt_b, _ = build_sparse_adam(b, lr=0.01, mode="rowwise")
    opt_b.load_state_dict(state)
    assert opt_b.t == 20
    _train([(a, opt_a), (b, opt_b)], steps=10, seed=3)
    assert _max_diff(a, b) == 0.0
    with pytest.raises(ValueError, match="tables"):
        opt_b.load_state_dict({**state, "tables": state["tables"][:1]})


def test_padding_row_never_moves_and_pruned_tables_stay_dense():
    emb = torch.nn.Embedding(10, 3, padding_idx=0)
    lin = torch.nn.Linear(3, 1)
    model = torch.nn.Sequential(emb, lin)
    opt, embs = build_sparse_adam(model, lr=0.1, mode="rowwise")
    assert embs == [emb]
    pad = emb.weight[0].detach().clone()
    for _ in range(3):
        loss = model(torch.tensor([0, 1, 2, 0])).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.flush()
    assert torch.equal(emb.weight[0], pad) and not torch.equal(emb.weight[1], torch.zeros(3))
    from torch.nn.utils import prune
    m = NeuMF(10, 10, factors=2, mlp_layers=[4, 2])
    prune.l1_unstructured(m.gmf.user_embedding, "weight", amount=0.5)
    _, embs = build_sparse_adam(m, lr=0.01, mode="rowwise")
    assert m.gmf.user_embedding not in embs and len(embs) == 3


@pytest.mark.realdata
def test_rowwise_fit_on_ml100k_matches_dense_quality(shared_data_dir, tmp_path, monkeypatch, capsys):
    """`experiments/ncf_benchmark.py --compare train.sparse=false train.sparse=rowwise` on real data (ml-100k, one
    epoch): the row-wise path trains through the harness as well as dense Adam."""
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "ncf_benchmark", Path(__file__).resolve().parents[1] / "experiments" / "ncf_benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setenv("RECSYS_DATA_DIR", str(shared_data_dir))
    monkeypatch.setattr(sys, "argv", ["ncf_benchmark.py", "--compare", "train.sparse=false", "train.sparse=rowwise",
                                      "--epochs", "1", "--data", "ml-100k", "--batch-sizes", "4096", "--threads", "1",
                                      f"paths.cache_dir={tmp_path}"])
    mod.main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 4096 |")]
    assert [r.split(" | ")[1] for r in rows] == ["train.sparse=false", "train.sparse=rowwise"], out
    hr = [float(r.split(" | ")[4]) for r in rows]
    assert all(0.1 < h <= 1.0 for h in hr) and abs(hr[0] - hr[1]) < 0.03, hr
