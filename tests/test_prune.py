"""Pruning functions (recsys.compress.prune) and the sparse artifact: exact ratios, no compounding, structured shrink
that keeps outputs, identical scores after a round trip, and config errors named up front."""
from __future__ import annotations

import pytest
import torch

from recsys.compress.prune import (
    TARGETS,
    MagnitudePruning,
    StructuredPruning,
    cubic_sparsity,
    magnitude_targets,
    mask_state,
    n_removed,
    prune_,
    shrink,
    sparsity,
    strip_,
    unit_groups,
)
from recsys.compress.prune.technique import MagnitudePrune, StructuredPrune
from recsys.export.artifact import load_artifact, save_artifact
from recsys.export.sparse import decode_tensor, encode_tensor, sparse_is_smaller
from recsys.models.ncf import GMF, MLP, NeuMF


def neumf(seed: int = 0) -> NeuMF:
    torch.manual_seed(seed)
    m = NeuMF(37, 29, factors=6, mlp_layers=[10, 8, 4])
    with torch.no_grad():   # spread the weights so magnitudes are distinct (init std 0.01 is fine too, but clearer)
        for p in m.parameters():
            p.normal_()
    return m


def pairs(n: int = 300, users: int = 37, items: int = 29) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, users, (n,), generator=g), torch.randint(0, items, (n,), generator=g)


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("targets", TARGETS)
@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.4, 0.95])
def test_magnitude_hits_exact_ratio(scope, targets, ratio):
    m = neumf()
    prune_(m, MagnitudePruning(ratio, scope, targets))
    keys = magnitude_targets(m, targets)
    masks = mask_state(m)
    assert set(masks) == set(keys)
    if scope == "layer":
        for k in keys:
            assert int((masks[k] == 0).sum()) == n_removed(ratio, masks[k].numel()), k
    else:
        total = sum(masks[k].numel() for k in keys)
        assert sum(int((masks[k] == 0).sum()) for k in keys) == n_removed(ratio, total)
    # untargeted tensors (and biases) are never touched
    assert all(not n.endswith("bias_mask") for n, _ in m.named_buffers())


def test_ratio_is_final_fraction_not_compounded_and_keeps_earlier_zeros():
    m = neumf()
    prune_(m, MagnitudePruning(0.4))
    before = {k: v.clone() for k, v in mask_state(m).items()}
    prune_(m, MagnitudePruning(0.4))                 # same ratio again: nothing more removed (no compounding)
    assert all(torch.equal(before[k], v) for k, v in mask_state(m).items())
    prune_(m, MagnitudePruning(0.6))
    after = mask_state(m)
    keys = magnitude_targets(m, "all")
    assert sparsity(m, keys) == pytest.approx(n_removed(0.6, sum(after[k].numel() for k in keys))
                                              / sum(after[k].numel() for k in keys))
    assert all(bool(((before[k] == 0) <= (after[k] == 0)).all()) for k in keys)   # monotone masks


def test_global_magnitude_removes_the_smallest_weights():
    m = neumf()
    ws = torch.cat([m.get_parameter(k).detach().abs().flatten() for k in magnitude_targets(m, "all")])
    threshold = ws.sort().values[n_removed(0.5, ws.numel()) - 1]
    prune_(m, MagnitudePruning(0.5))
    for k in magnitude_targets(m, "all"):
        mod, _, _ = k.rpartition(".")
        mm = m.get_submodule(mod)
        assert bool((mm.weight_orig.abs()[mm.weight_mask == 0] <= threshold).all())


@pytest.mark.parametrize("targets", TARGETS)
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_structured_removes_exact_unit_counts(targets, ratio):
    m = neumf()
    prune_(m, StructuredPruning(ratio, targets))
    small = shrink(strip_(m))
    before = {g.name: g.n for g in unit_groups(neumf())}
    after = {g.name: g.n for g in unit_groups(small)}
    for g in unit_groups(neumf()):
        selected = targets in ("all", g.kind)
        assert after[g.name] == before[g.name] - (n_removed(ratio, g.n) if selected else 0), g.name
    cfg = small.config()
    assert cfg["factors"] == after["gmf.factors"] and cfg["mlp_layers"][0] == 2 * after["mlp.user_dims"]


@pytest.mark.parametrize("model", [neumf(), GMF(37, 29, 6), MLP(37, 29, [12, 6, 3])], ids=["neumf", "gmf", "mlp"])
def test_shrink_preserves_outputs_when_removed_units_are_zero(model):
    prune_(model, StructuredPruning(0.5, "all", "l1"))
    strip_(model)
    small = shrink(model)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    u, i = pairs()
    torch.testing.assert_close(small(u, i), model(u, i), rtol=0, atol=1e-5)
    torch.testing.assert_close(small.score_all(u[:4]), model.score_all(u[:4]), rtol=0, atol=1e-5)
    rebuilt = type(small)(**{k: v for k, v in small.config().items() if k != "_target_"})
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in small.parameters()]


def test_shrink_of_hand_zeroed_units():
    m = neumf()
    with torch.no_grad():       # zero GMF factor 2 and the MLP first hidden neuron 5 by hand, no masks involved
        m.gmf.user_embedding.weight[:, 2] = 0
        m.gmf.item_embedding.weight[:, 2] = 0
        m.mlp.tower[1].weight[5] = 0
        m.mlp.tower[1].bias[5] = 0
    small = shrink(m)
    assert small.config()["factors"] == 5 and small.config()["mlp_layers"] == [10, 7, 4]
    u, i = pairs()
    torch.testing.assert_close(small(u, i), m(u, i), rtol=0, atol=1e-5)


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.9])
def test_sparse_artifact_round_trip_identical_and_smaller(tmp_path, ratio):
    torch.manual_seed(0)
    m = NeuMF(370, 290, factors=16, mlp_layers=[32, 16, 8])
    prune_(m, MagnitudePruning(ratio))
    strip_(m)
    dense_bytes = save_artifact(m, tmp_path / "d.pt")
    sparse_bytes = save_artifact(m, tmp_path / "s.pt", fmt="sparse")
    assert sparse_is_smaller(m) and sparse_bytes < dense_bytes
    back = load_artifact(tmp_path / "s.pt")
    u, i = pairs(users=370, items=290)
    assert torch.equal(back.score(u, i), m.eval().score(u, i))
    theirs = m.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in back.state_dict().items())


@pytest.mark.parametrize("shape,density", [((300, 8), 0.05), ((40, 70000), 0.01), ((1000,), 0.5), ((64, 32), 0.99)])
def test_tensor_encodings_round_trip(shape, density):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < density)
    enc = encode_tensor(t)
    assert torch.equal(decode_tensor(enc), t)
    if density < 0.1:
        assert enc["kind"] in ("csr", "bitmap")
    if density > 31 / 32:      # a bitmap costs 1/32 of dense on top of the values: dense wins above that
        assert enc["kind"] == "dense"


def test_dense_model_is_not_sparse_smaller():
    assert not sparse_is_smaller(neumf())


def test_cubic_schedule():
    assert cubic_sparsity(0, 100, 0.8) == 0.0
    assert cubic_sparsity(75, 100, 0.8, end_fraction=0.75) == pytest.approx(0.8)
    assert cubic_sparsity(100, 100, 0.8, end_fraction=0.75) == pytest.approx(0.8)
    vals = [cubic_sparsity(t, 100, 0.8, frequency=10) for t in range(101)]
    assert vals == sorted(vals)                               # monotone
    assert vals[5] == vals[0] and vals[10] > vals[9]          # held between updates
    assert vals[50] == pytest.approx(0.8 * (1 - 0.5 ** 3))    # s_f + (s_i - s_f)(1 - t/T)^3


def cfg(**prune):
    base = {"method": "magnitude", "ratio": 0.4, "scope": "global", "targets": "all", "schedule": "oneshot"}
    return {"prune": {**base, **prune}, "model": {"name": "neumf", "factors": 8, "mlp_layers": [64, 32, 16, 8]},
            "finetune": {"epochs": 2, "lr": 1e-5, "data_fraction": 0.1, "select_best": False}}


@pytest.mark.parametrize("over,needle", [
    ({"ratio": 1.0}, "prune.ratio=1.0"), ({"ratio": -0.1}, "prune.ratio=-0.1"), ({"ratio": "x"}, "prune.ratio='x'"),
    ({"targets": "bias"}, "prune.targets='bias'"), ({"scope": "row"}, "prune.scope='row'"),
    ({"schedule": "linear"}, "prune.schedule='linear'"),
])
def test_magnitude_config_errors(over, needle):
    errs = MagnitudePrune.check(cfg(**over))
    assert any(needle in e for e in errs), errs
    assert MagnitudePrune.check(cfg()) == []


def test_gradual_needs_finetune_steps():
    c = cfg(schedule="gradual")
    c["finetune"]["epochs"] = 0
    assert any("finetune.epochs=0" in e for e in MagnitudePrune.check(c))


def test_structured_ratio_that_empties_a_layer_is_rejected():
    c = cfg(method="structured", ratio=0.9, norm="l2")
    c["model"]["mlp_layers"] = [64, 32, 16, 2]   # round(0.9 * 2) = 2 of 2 units of the last layer
    errs = StructuredPrune.check(c)
    assert any("mlp_layers[3]=2" in e and "empty" in e for e in errs), errs
    assert StructuredPrune.check(cfg(method="structured", norm="l2", ratio=0.5)) == []
    assert any("prune.norm='l3'" in e for e in StructuredPrune.check(cfg(method="structured", norm="l3")))
