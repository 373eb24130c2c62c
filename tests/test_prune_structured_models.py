"""Structured pruning on DeepFM and GRU4Rec: exact unit counts, shrink keeps outputs of the masked model, the shrunk
model is a smaller config of the same class whose artifact reloads to identical scores, the gradual schedule under the
pruning callback, config errors named up front, and one pipeline job per model on the real data samples."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import mlflow
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from torch.utils.data import DataLoader, TensorDataset

from recsys.compress.prune import (
    PruningCallback,
    StructuredPruning,
    at_ratio,
    effective,
    mask_state,
    n_removed,
    prune_,
    shrink,
    strip_,
    unit_groups,
)
from recsys.compress.prune.technique import StructuredPrune
from recsys.export.artifact import load_artifact, save_artifact
from recsys.models.deepfm import DeepFM
from recsys.models.gru4rec import GRU4Rec
from recsys.pipeline import run
from recsys.tasks.ctr import CTRTask
from recsys.tasks.session import SessionTask

FIELDS, BAGS, N_DENSE, USERS, ITEMS = [5, 7, 3], [4, 3], 2, 11, 23
GRUS = {"constrained": {}, "constrained-2layers": {"layers": 2},
        "own-embedding": {"constrained_embedding": False},
        "embedding6-3layers": {"constrained_embedding": False, "embedding": 6, "layers": 3}}


def _spread(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():      # distinct, non-tiny weights, so unit norms differ and dropped units would show
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def deepfm(mlp_layers=(10, 6), useritem: bool = False, bags: bool = False) -> DeepFM:
    """Table mode (categorical + dense fields, as on Criteo), or user-item mode (categorical + multi-hot fields)."""
    if not useritem:
        return _spread(DeepFM(FIELDS, n_dense=N_DENSE, bag_dims=BAGS if bags else (), bag_len=3, embed_dim=8,
                              mlp_layers=mlp_layers))
    m = _spread(DeepFM(FIELDS, bag_dims=BAGS, bag_len=3, embed_dim=8, mlp_layers=mlp_layers, n_users=USERS,
                       n_items=ITEMS, n_user_fields=1))
    g = torch.Generator().manual_seed(4)
    m.user_table[:, 0] = torch.randint(0, FIELDS[0], (USERS,), generator=g)
    m.item_table[:] = torch.stack([torch.randint(0, d, (ITEMS,), generator=g) for d in FIELDS[1:]], 1)
    m.item_bags[:] = torch.stack([torch.randint(0, d + 1, (ITEMS, 3), generator=g) for d in BAGS], 1)
    return m


def gru4rec(name: str = "constrained") -> GRU4Rec:
    return _spread(GRU4Rec(ITEMS, hidden_size=8, **GRUS[name])).eval()


def deepfm_batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.stack([torch.randint(0, d, (n,), generator=g) for d in FIELDS], 1), torch.rand(n, N_DENSE, generator=g)


def sessions(n: int = 6, length: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, ITEMS, (n, length), generator=g), torch.tensor([5, 4, 1, 3, 5, 2][:n])


def outputs(m: torch.nn.Module) -> list[torch.Tensor]:
    """Every scoring path a deployed model is used through."""
    with torch.no_grad():
        if isinstance(m, DeepFM) and m.n_users:
            users = torch.arange(USERS)
            return [m(users, torch.arange(USERS) % ITEMS), m.score_all(users[:3])]
        if isinstance(m, DeepFM):
            return [m(*deepfm_batch())]
        seq, lengths = sessions()
        scores, hidden = m.score_next(seq[:, 0], m.init_hidden(len(seq)))
        return [m(seq, lengths), scores, m.score_next(seq[:, 1], hidden)[0], m.item_scores(hidden[-1], seq[:, 2])]


MODELS = {"deepfm": deepfm, "deepfm-useritem": lambda: deepfm(useritem=True),
          **{f"gru4rec-{k}": (lambda k=k: gru4rec(k)) for k in GRUS}}
CASES = [(name, t) for name in MODELS for t in ("embeddings", "mlp", "all")
         if not (t == "embeddings" and name.startswith("gru4rec-constrained"))]


@pytest.mark.parametrize("name,targets", CASES)
@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.5, 0.75])
def test_exact_unit_counts(name, targets, ratio):
    m = MODELS[name]()
    before = {g.name: (g.kind, g.n) for g in unit_groups(m)}
    prune_(m, StructuredPruning(ratio, targets))
    small = shrink(strip_(m))
    after = {g.name: g.n for g in unit_groups(small)}
    assert set(after) == set(before)
    for g, (kind, n) in before.items():
        assert after[g] == n - (n_removed(ratio, n) if targets in ("all", kind) else 0), g
    cfg = small.config()
    if isinstance(small, DeepFM):
        assert cfg["embed_dim"] == after["embed_dims"] and cfg["mlp_layers"] == [after["mlp.0"], after["mlp.3"]]
    else:
        assert cfg["hidden_size"] == after["gru.layer0"]
        assert small.gru.input_size == (after.get("embedding_dims") or cfg["hidden_size"])


@pytest.mark.parametrize("name,targets", CASES)
@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_shrink_preserves_outputs_of_the_masked_model(name, targets, norm):
    m = MODELS[name]()
    dense_out = outputs(m)
    prune_(m, StructuredPruning(0.5, targets, norm))
    masked = outputs(m)
    assert any(not torch.allclose(a, b) for a, b in zip(masked, dense_out))    # the masks did remove something
    small = shrink(strip_(m))
    for a, b in zip(outputs(small), masked):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in m.parameters())
    assert type(small) is type(m)
    rebuilt = type(small)(**{k: v for k, v in small.config().items() if k != "_target_"})
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in small.parameters()]


def test_units_ranked_by_group_norm():
    m = deepfm(bags=True)
    with torch.no_grad():     # dimension 5 is weakest in every table and in the MLP columns that read it
        for t in (m.embedding.weight, m.bag_embedding.weight, m.dense_embedding):
            t[:, 5] *= 1e-3
        m.mlp[0].weight[:, 5::8] *= 1e-3
        m.mlp[3].weight[2] *= 1e-3            # second hidden layer: neuron 2 (its row and bias, its predict column)
        m.mlp[3].bias[2] *= 1e-3
        m.predict.weight[:, 2] *= 1e-3
    prune_(m, StructuredPruning(1 / 8, "all"))
    masks = mask_state(m)
    assert torch.nonzero(masks["embedding.weight"][0] == 0).flatten().tolist() == [5]
    assert torch.nonzero(masks["mlp.3.weight"][:, 0] == 0).flatten().tolist() == [2]   # round(6 / 8) = 1


@pytest.mark.parametrize("name", ["deepfm", "gru4rec-constrained", "gru4rec-embedding6-3layers"])
def test_shrunk_artifact_round_trip(tmp_path, name):
    m = MODELS[name]()
    prune_(m, StructuredPruning(0.5, "all"))
    small = shrink(strip_(m)).eval()
    nbytes = save_artifact(small, tmp_path / "small.pt")
    assert nbytes < save_artifact(MODELS[name](), tmp_path / "dense.pt")
    back = load_artifact(tmp_path / "small.pt")
    assert back.config() == small.config()
    for a, b in zip(outputs(back), outputs(small)):
        assert torch.equal(a, b)


def test_hand_zeroed_units_and_tied_gru_layers():
    m = gru4rec("constrained-2layers")
    with torch.no_grad():    # unit 3 of layer 0 only: hidden_size is one size for every layer, so nothing can go
        for w in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(m.gru, w)[3::8] = 0
    ref = outputs(m)
    small = shrink(m)
    assert small.config()["hidden_size"] == 8
    for a, b in zip(outputs(small), ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with torch.no_grad():    # ... and of layer 1 too (its input columns of layer 0, since the item table is out.weight)
        for w in ("weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1"):
            getattr(m.gru, w)[3::8] = 0
        m.gru.weight_ih_l0[:, 3] = 0
    ref = outputs(m)
    small = shrink(m)
    assert small.config()["hidden_size"] == 7 and small.out.weight.shape == (ITEMS, 7)
    for a, b in zip(outputs(small), ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_constrained_gru4rec_has_no_embedding_group():
    with pytest.raises(ValueError, match="prune.targets='embeddings' selects no unit group of GRU4Rec"):
        prune_(gru4rec(), StructuredPruning(0.5, "embeddings"))


# ------------------------------------------------------------------------------------------- gradual, callback
def _fit(model, task, data, tmp_path, final: float = 0.5) -> PruningCallback:
    spec = StructuredPruning(0.0)
    prune_(model, spec)
    cb = PruningCallback(lambda mm, r: prune_(mm, at_ratio(spec, r)), final, "gradual", end_fraction=0.5, frequency=2)
    L.Trainer(max_epochs=2, callbacks=[cb], logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=str(tmp_path)).fit(task, train_dataloaders=data)
    return cb


@pytest.mark.parametrize("name", ["deepfm", "gru4rec-constrained-2layers"])
def test_gradual_schedule_then_shrink(tmp_path, name):
    g = torch.Generator().manual_seed(3)
    m = MODELS[name]()
    if isinstance(m, DeepFM):
        cat, dense = deepfm_batch(320)
        data = DataLoader(TensorDataset(cat, dense, torch.randint(0, 2, (320,), generator=g).float()), batch_size=32)
        task = CTRTask(m, lr=0.01)
    else:
        def r(*shape):
            return torch.randint(0, ITEMS, shape, generator=g)
        # session-parallel batches: (clicks, next clicks, session starts, negatives shared by the batch)
        data = DataLoader([(r(8), r(8), torch.rand(8, generator=g) < 0.2, r(5)) for _ in range(20)], batch_size=None)
        task = SessionTask(m, lr=0.05)
    before = {x.name: x.n for x in unit_groups(m)}
    start = {k: v.detach().clone() for k, v in m.named_parameters()}
    cb = _fit(m, task, data, tmp_path)
    ratios = [r for _, r in cb.history]
    assert ratios == sorted(ratios) and len(ratios) > 3 and ratios[-1] == pytest.approx(0.5)
    for key, mask in mask_state(m).items():     # kept weights were trained through the masks, removed ones are zero
        w = effective(m, key)
        assert not torch.equal(w[mask != 0], start[key][mask != 0]) and bool((w[mask == 0] == 0).all()), key
    m.eval()
    ref = outputs(m)
    small = shrink(strip_(m))
    assert {x.name: x.n for x in unit_groups(small)} == {k: n - n_removed(0.5, n) for k, n in before.items()}
    for a, b in zip(outputs(small), ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ config checks
def job(model: dict, **prune) -> dict:
    return {"prune": {"method": "structured", "ratio": 0.5, "targets": "all", "norm": "l2", "schedule": "oneshot",
                      **prune},
            "model": model, "finetune": {"epochs": 1, "select_best": False}}


DEEPFM_CFG = {"name": "deepfm", "_target_": "recsys.models.deepfm.DeepFM", "embed_dim": 4, "mlp_layers": [8, 4]}
GRU_CFG = {"name": "gru4rec", "_target_": "recsys.models.gru4rec.GRU4Rec", "hidden_size": 16, "layers": 1,
           "embedding": 0, "constrained_embedding": True}


@pytest.mark.parametrize("model,prune,needles", [
    (DEEPFM_CFG, {"ratio": 0.9}, ["prune.ratio=0.9", "model.embed_dim=4", "empty"]),
    ({**DEEPFM_CFG, "mlp_layers": [8, 1]}, {"ratio": 0.5, "targets": "mlp"}, ["model.mlp_layers[1]=1", "empty"]),
    ({**GRU_CFG, "hidden_size": 2}, {"ratio": 0.75}, ["prune.ratio=0.75", "model.hidden_size=2", "empty"]),
    ({**GRU_CFG, "constrained_embedding": False, "embedding": 2}, {"ratio": 0.75, "targets": "embeddings"},
     ["model.embedding=2", "empty"]),
    (GRU_CFG, {"targets": "embeddings"}, ["prune.targets='embeddings'", "model.constrained_embedding=true",
                                          "prune.targets=mlp or all"]),
    (GRU_CFG, {"targets": "gates"}, ["prune.targets='gates'", "'embeddings', 'mlp', 'all'"]),
])
def test_config_errors(model, prune, needles):
    errs = StructuredPrune.check(job(model, **prune))
    assert any(all(n in e for n in needles) for e in errs), errs


@pytest.mark.parametrize("model,prune", [
    (DEEPFM_CFG, {}), (DEEPFM_CFG, {"targets": "embeddings", "ratio": 0.75}), (GRU_CFG, {"targets": "mlp"}),
    ({**GRU_CFG, "constrained_embedding": False}, {"targets": "embeddings"}),
    (GRU_CFG, {"schedule": "gradual"}),
])
def test_good_configs_pass(model, prune):
    assert StructuredPrune.check(job(model, **prune)) == []


# ------------------------------------------------------------------------------------------------------ pipeline
CONF = str(Path(__file__).resolve().parents[1] / "conf")
PIPELINE = {
    "deepfm": ["data=criteo", "model.embed_dim=4", "model.mlp_layers=[8,4]", "train.batch_size=1024",
               "prune.ratio=0.5"],
    "gru4rec": ["data=yoochoose", "model.hidden_size=16", "model.n_sample=64", "model.batch_size=64",
                "train.optimizer=adagrad", "train.lr=0.05", "prune.ratio=0.25", "prune.schedule=gradual",
                "prune.frequency=5"],
}


@pytest.mark.realdata
@pytest.mark.parametrize("model", list(PIPELINE))
def test_pipeline_ships_a_smaller_model(tmp_path, shared_data_dir, model):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            f"paths.root_dir={tmp_path}", f"paths.data_dir={shared_data_dir}", f"model={model}", "prune=structured",
            *PIPELINE[model], "train.epochs=1", "finetune.epochs=1", "finetune.data_fraction=0.1",
            "bench.requests=20", "bench.warmup=2", "bench.full_catalogue_requests=2", "bench.throughput_repeats=1",
            "bench.throughput_batch=256", "trainer.enable_progress_bar=false", "tracking.log_model=false"])
    run(cfg)      # the pipeline itself checks that the reloaded artifact gives identical scores
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    r = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])[0]
    m = r.data.metrics
    assert r.data.tags["artifact_format"] == "dense"
    assert m["final/params_total"] < m["dense/params_total"]
    path = Path(client.download_artifacts(r.info.run_id, "artifacts/compressed.pt", str(tmp_path / "dl")))
    small = load_artifact(path)
    if model == "deepfm":
        assert m["final/pruned_embed_dim"] == 2 and m["final/pruned_mlp_width"] == 4
        assert small.config()["embed_dim"] == 2 and small.config()["mlp_layers"] == [4, 2]
    else:
        assert m["final/pruned_hidden_size"] == 12 and small.config()["hidden_size"] == 12
        assert small.out.weight.shape[1] == 12 and small.gru.input_size == 12
    mlflow.set_tracking_uri(None)


def test_magnitude_pruned_gru4rec_item_table_keeps_training(tmp_path):
    """The session loss reads ``out.weight`` without calling ``out``; the masked table must still get gradients."""
    from recsys.compress.prune import MagnitudePruning

    g = torch.Generator().manual_seed(5)
    m = MODELS["gru4rec-constrained-2layers"]()
    spec = MagnitudePruning(0.5)
    prune_(m, spec)
    before = m.out.weight_orig.detach().clone()
    mask = m.out.weight_mask.clone()
    data = DataLoader([(torch.randint(0, ITEMS, (8,), generator=g), torch.randint(0, ITEMS, (8,), generator=g),
                        torch.rand(8, generator=g) < 0.2, torch.randint(0, ITEMS, (5,), generator=g))
                       for _ in range(10)], batch_size=None)
    cb = PruningCallback(lambda mm, r: prune_(mm, MagnitudePruning(r)), 0.5)
    L.Trainer(max_epochs=1, callbacks=[cb], logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=str(tmp_path)).fit(SessionTask(m, lr=0.05),
                                                                              train_dataloaders=data)
    after = m.out.weight_orig.detach()
    assert not torch.equal(after[mask != 0], before[mask != 0])      # kept item weights trained
    assert bool((after[mask == 0] == 0).all())                       # removed ones stay zero
