"""Low-rank factorisation: SVD error = discarded singular values, rank/energy selection, artifact round trip, checks."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from recsys import checks
from recsys.compress.lowrank import (
    FactorizedEmbedding,
    FactorizedLinear,
    LowRankConfig,
    factorize_,
    structure,
    svd_factors,
)
from recsys.errors import ConfigError
from recsys.export.artifact import load_artifact, save_artifact
from recsys.models.ncf import NeuMF

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def test_reconstruction_error_equals_discarded_singular_values():
    torch.manual_seed(0)
    w = torch.randn(50, 12, dtype=torch.float64)
    for r in (1, 4, 11):
        a, b, s = svd_factors(w, rank=r)
        assert a.shape == (50, r) and b.shape == (r, 12)
        err = torch.linalg.matrix_norm(w - a @ b)
        assert err.item() == pytest.approx(s[r:].pow(2).sum().sqrt().item(), rel=1e-9)   # Eckart-Young
        assert torch.linalg.matrix_norm(w - a @ b, ord=2).item() == pytest.approx(s[r].item(), rel=1e-9)


def test_energy_picks_the_smallest_sufficient_rank():
    u, _ = torch.linalg.qr(torch.randn(30, 4, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(10, 4, dtype=torch.float64))
    s = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)   # energies 16, 4, 1, 1 of 22
    w = u @ torch.diag(s) @ v.T
    assert svd_factors(w, energy=16 / 22)[0].shape[1] == 1
    assert svd_factors(w, energy=16.5 / 22)[0].shape[1] == 2
    assert svd_factors(w, energy=20 / 22)[0].shape[1] == 2
    assert svd_factors(w, energy=21 / 22)[0].shape[1] == 3


def test_factorised_neumf_scores_consistently_and_roundtrips_smaller(tmp_path):
    torch.manual_seed(0)
    model = NeuMF(40, 70, factors=8, mlp_layers=[32, 16, 8])
    dense = copy.deepcopy(model)
    report = factorize_(model, LowRankConfig(rank=3, targets=("embeddings", "linear")))
    kinds = {p: m["kind"] for p, m in report["modules"].items()}
    assert kinds == {"gmf.user_embedding": "embedding", "gmf.item_embedding": "embedding",
                     "mlp.user_embedding": "embedding", "mlp.item_embedding": "embedding",
                     "mlp.tower.1": "linear", "mlp.tower.4": "linear"}
    assert isinstance(model.gmf.user_embedding, FactorizedEmbedding)
    assert isinstance(model.mlp.tower[1], FactorizedLinear)
    for m in report["modules"].values():
        assert m["fro_error"] == pytest.approx(m["discarded_sv_norm"], rel=1e-4, abs=1e-6)
    model.eval()
    users = torch.arange(40).repeat_interleave(70)
    items = torch.arange(70).repeat(40)
    pair = model.score(users, items).view(40, 70)
    assert torch.allclose(model.score_all(torch.arange(40)), pair, atol=1e-5)
    # rank 3 < every width: the function really changed (the discarded part is gone)
    assert not torch.allclose(pair, dense.eval().score(users, items).view(40, 70), atol=1e-7)
    d_path, f_path = tmp_path / "dense.pt", tmp_path / "lowrank.pt"
    d_bytes = save_artifact(dense, d_path)
    f_bytes = save_artifact(model, f_path, fmt="lowrank")
    assert f_bytes < d_bytes
    reloaded = load_artifact(f_path)
    assert structure(reloaded) == structure(model)
    assert torch.equal(reloaded.score(users, items), model.score(users, items))


def test_deepfm_factorises_field_tables_not_first_order_weights(tmp_path):
    """DeepFM: the shared field-embedding tables are factorised; the width-1 first-order tables cannot shrink and are
    left dense; the genre bag's padding row stays exactly zero; the artifact reloads to identical scores."""
    from recsys.models.deepfm import DeepFM

    torch.manual_seed(0)
    model = DeepFM([30, 20, 5], n_dense=3, bag_dims=[6], bag_len=3, embed_dim=8, mlp_layers=[16, 8]).eval()
    report = factorize_(model, LowRankConfig(rank=2))
    assert set(report["modules"]) == {"embedding", "bag_embedding"}
    assert type(model.linear) is torch.nn.Embedding and type(model.bag_linear) is torch.nn.Embedding
    assert model.bag_embedding.first.padding_idx == 0
    assert torch.count_nonzero(model.bag_embedding.weight[0]) == 0
    save_artifact(model, tmp_path / "lr.pt", fmt="lowrank")
    back = load_artifact(tmp_path / "lr.pt")
    assert back.bag_embedding.first.padding_idx == 0
    cat = torch.stack([torch.randint(0, n, (64,)) for n in (30, 20, 5)], 1)
    dense, bags = torch.randn(64, 3), torch.randint(0, 7, (64, 1, 3))   # one genre-style bag of 3 slots
    assert torch.equal(back.logits(cat, dense, bags), model.logits(cat, dense, bags))


def test_rank_at_or_above_an_embedding_width_raises():
    model = NeuMF(40, 70, factors=4, mlp_layers=[16, 8])
    with pytest.raises(ConfigError, match="lowrank.rank=4"):
        factorize_(model, LowRankConfig(rank=4))


def test_energy_one_keeps_matrices_dense():
    model = NeuMF(40, 70, factors=4, mlp_layers=[16, 8])
    report = factorize_(model, LowRankConfig(energy=1.0))
    assert report["modules"] == {} and structure(model) == {}


def _cfg(tmp_path: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.root_dir={tmp_path}", f"paths.data_dir={tmp_path}",
                                           "model.factors=8", "model.mlp_layers=[32,16,8]", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("overrides,needle", [
    (["lowrank=svd", "lowrank.rank=8"],
     "lowrank.rank=8: must be smaller than every embedding width, but model.factors=8"),
    (["lowrank=svd", "lowrank.rank=null"], "set exactly one of them"),
    (["lowrank=svd", "lowrank.energy=0.9"], "set exactly one of them"),
    (["lowrank=svd", "lowrank.rank=null", "lowrank.energy=1.5"], "lowrank.energy=1.5"),
    (["lowrank=svd", "lowrank.targets=[convs]"], "lowrank.targets"),
    (["lowrank=svd", "lowrank.rank=4", "distill=kd", "distill.student.factors=4"],
     "but model.factors=4"),   # low-rank applies to the student
])
def test_bad_lowrank_config_fails_before_training(tmp_path, overrides, needle):
    with pytest.raises(ConfigError) as e:
        checks.validate(_cfg(tmp_path, *overrides))
    assert needle in str(e.value)


def test_good_lowrank_config_passes(tmp_path):
    checks.validate(_cfg(tmp_path, "lowrank=svd", "lowrank.rank=4"))
    checks.validate(_cfg(tmp_path, "lowrank=svd", "lowrank.rank=null", "lowrank.energy=0.8"))


def test_factorised_linear_is_a_drop_in_linear():
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    model = nn.Sequential(lin)
    factorize_(model, LowRankConfig(rank=5, targets=("linear",)))   # 5*(6+5) >= 30: saves nothing, kept dense
    assert type(model[0]) is nn.Linear
    factorize_(model, LowRankConfig(rank=2, targets=("linear",)))
    f = model[0]
    assert isinstance(f, FactorizedLinear) and f.weight.shape == (5, 6)
    x = torch.randn(3, 6)
    assert torch.allclose(f(x), x @ f.weight.T + f.bias, atol=1e-6)
    assert torch.equal(f.bias, lin.bias)


def test_lowrank_then_ptq_ships_in_the_composite_format(tmp_path):
    """distill -> lowrank -> prune -> quant order: the factors are quantized, and the artifact keeps the structure."""
    from recsys.compress.quant import QuantConfig, quantize_
    from recsys.export.lowrank import with_structure

    torch.manual_seed(0)
    model = NeuMF(40, 70, factors=8, mlp_layers=[32, 16, 8])
    factorize_(model, LowRankConfig(rank=3))
    quantize_(model, QuantConfig(bits=8, activations="none"))
    fmt = with_structure(model, "quantized")
    assert fmt == "lowrank+quantized"
    path = tmp_path / "lr_q.pt"
    save_artifact(model, path, fmt=fmt)
    reloaded = load_artifact(path)
    users, items = torch.randint(0, 40, (200,)), torch.randint(0, 70, (200,))
    assert torch.equal(reloaded.score(users, items), model.eval().score(users, items))
    assert with_structure(NeuMF(4, 5, 2, [4, 2]), "quantized") == "quantized"
