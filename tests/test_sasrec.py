"""SASRec: the SessionModel contract agrees with the sequence forward, structured pruning of heads / FFN units /
embedding dims yields a smaller SASRec with the masked model's outputs, PTQ quantizes the attention projections,
and the README command trains and evaluates it on the YooChoose sample."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from recsys.compress.prune import StructuredPruning, n_removed, prune_, shrink, strip_, unit_groups
from recsys.compress.prune.technique import StructuredPrune
from recsys.compress.quant import QuantConfig, quantize_
from recsys.export.artifact import load_artifact, save_artifact
from recsys.models import build_model
from recsys.models.base import SessionModel
from recsys.models.sasrec import SASRec
from recsys.nn.quantized import QuantizedLinear
from recsys.pipeline import run

ITEMS = 23
SHAPES = {"1head": {"n_heads": 1}, "2heads-3layers": {"n_heads": 2, "layers": 3, "inner_size": 12},
          "4heads-headdim3": {"n_heads": 4, "head_dim": 3, "inner_size": 6}}


def sasrec(name: str = "2heads-3layers", max_len: int = 4) -> SASRec:
    torch.manual_seed(0)
    m = SASRec(ITEMS, hidden_size=8, max_len=max_len, dropout=0.1, **SHAPES[name])
    with torch.no_grad():      # distinct, non-tiny weights, so unit norms differ and dropped units would show
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m.eval()


def sessions() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, ITEMS, (6, 7), generator=g), torch.tensor([7, 4, 1, 3, 5, 2])


def outputs(m: SASRec) -> list[torch.Tensor]:
    """Every scoring path: sequence forward, the serving request on a fresh and on a stored state, sampled scores."""
    with torch.no_grad():
        seq, lengths = sessions()
        s1, state = m.score_next(seq[:, 0], m.init_state(len(seq)))
        s2, state = m.score_next(seq[:, 1], state)
        h, _ = m.advance(seq[:, 2], state)
        return [m(seq, lengths), s1, s2, m.item_scores(h, seq[:, 3])]


@pytest.mark.parametrize("max_len", [3, 7, 20])
def test_stepwise_state_matches_sequence_forward(max_len):
    m = sasrec(max_len=max_len)
    assert isinstance(m, SessionModel)
    seq, lengths = sessions()
    state, h = m.init_state(len(seq)), torch.zeros(len(seq), 8)
    with torch.no_grad():
        for t in range(seq.shape[1]):
            live = t < lengths
            h_t, new = m.advance(seq[:, t], state)
            state, h = m.keep_state(new, state, live), torch.where(live[:, None], h_t, h)
        torch.testing.assert_close(m.item_scores(h), m(seq, lengths), rtol=0, atol=1e-5)
    # the window keeps the last max_len clicks: older clicks change nothing
    long = torch.cat([torch.randint(0, ITEMS, (6, 5)), seq], 1)
    if max_len <= 1 + int(lengths.min()):
        with torch.no_grad():
            torch.testing.assert_close(m(long, lengths + 5), m(seq, lengths), rtol=0, atol=1e-5)
    fresh = m.reset_state(state, torch.tensor([True, False, False, False, False, True]))
    assert bool((fresh[[0, 5]] == -1).all()) and torch.equal(fresh[1:5], state[1:5])
    assert build_model(m.config()).config() == m.config()


def test_training_gradient_reaches_every_parameter():
    m = sasrec().train()
    seq, lengths = sessions()
    m(seq, lengths).logsumexp(1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


CASES = [(n, t) for n in SHAPES for t in ("embeddings", "mlp", "all")]


@pytest.mark.parametrize("name,targets", CASES)
def test_structured_shrink_is_a_smaller_sasrec_with_the_masked_outputs(name, targets):
    m = sasrec(name)
    before = {g.name: (g.kind, g.n) for g in unit_groups(m)}
    dense_out = outputs(m)
    prune_(m, StructuredPruning(0.5, targets))
    masked = outputs(m)
    assert any(not torch.allclose(a, b) for a, b in zip(masked, dense_out))    # the masks did remove something
    small = shrink(strip_(m))
    after = {g.name: g.n for g in unit_groups(small)}
    for g, (kind, n) in before.items():     # a head group left with one head is no longer a prunable group
        assert after.get(g, 1) == n - (n_removed(0.5, n) if targets in ("all", kind) else 0), g
    cfg = small.config()
    assert (cfg["hidden_size"], cfg["n_heads"], cfg["inner_size"]) == \
        (after["embedding_dims"], after.get("blocks.0.heads", 1), after["blocks.0.ffn"])
    assert small.blocks[0].q.weight.shape == (cfg["n_heads"] * cfg["head_dim"], cfg["hidden_size"])
    for a, b in zip(outputs(small), masked):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert type(small) is SASRec
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in m.parameters())


def test_hand_zeroed_head_is_removed_without_changing_outputs(tmp_path):
    m = sasrec("4heads-headdim3")
    with torch.no_grad():      # head 2 of every block: rows 2, 6, 10 of q/k/v (head-interleaved layout)
        for b in m.blocks:
            for lin in (b.q, b.k, b.v):
                lin.weight[2::4] = 0
                lin.bias[2::4] = 0
    ref = outputs(m)
    small = shrink(m)
    assert small.n_heads == 3 and small.blocks[0].out.weight.shape == (8, 9)
    for a, b in zip(outputs(small), ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    nbytes = save_artifact(small, tmp_path / "small.pt")
    assert nbytes < save_artifact(sasrec("4heads-headdim3"), tmp_path / "dense.pt")
    back = load_artifact(tmp_path / "small.pt")
    for a, b in zip(outputs(back), outputs(small)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("model,ratio,needles", [
    ({"hidden_size": 8, "n_heads": 2, "inner_size": 8}, 0.75, ["prune.ratio=0.75", "model.n_heads=2", "empty"]),
    ({"hidden_size": 8, "n_heads": 2, "inner_size": 1}, 0.5, ["model.inner_size=1", "empty"]),
])
def test_structured_config_errors(model, ratio, needles):
    job = {"prune": {"method": "structured", "ratio": ratio, "targets": "all", "norm": "l2", "schedule": "oneshot"},
           "model": {"name": "sasrec", "_target_": "recsys.models.sasrec.SASRec", "layers": 2, **model},
           "finetune": {"epochs": 1, "select_best": False}}
    errs = StructuredPrune.check(job)
    assert any(all(n in e for n in needles) for e in errs), errs


def test_ptq_quantizes_the_attention_projections():
    m = sasrec()
    ref = outputs(m)
    quantize_(m, QuantConfig(bits=8, targets=("embeddings", "linear")))
    for b in m.blocks:
        assert all(isinstance(getattr(b, k), QuantizedLinear) for k in ("q", "k", "v", "out", "ffn1", "ffn2"))
    for a, b in zip(outputs(m), ref):     # int8 weights: close to the float model, not equal
        assert not torch.equal(a, b)
        torch.testing.assert_close(a, b, rtol=0, atol=0.1 * float(b.abs().max()))


CONF = str(Path(__file__).resolve().parents[1] / "conf")


@pytest.mark.realdata
def test_readme_command_trains_and_evaluates_on_yoochoose(tmp_path, shared_data_dir):
    """README: ``python run.py model=sasrec data=yoochoose train.epochs=5`` (here 1 epoch, a small model)."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            f"paths.root_dir={tmp_path}", f"paths.data_dir={shared_data_dir}", "model=sasrec", "data=yoochoose",
            "train.epochs=1", "model.hidden_size=16", "model.max_len=10", "bench.requests=20",
            "bench.warmup=2", "bench.full_catalogue_requests=2", "bench.throughput_repeats=1",
            "bench.throughput_batch=128", "trainer.enable_progress_bar=false"])
    run(cfg)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    r = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])[0]
    m = r.data.metrics
    popular = 20 / m["data/n_items"]        # far above what 20 random items of the catalogue would hit
    assert m["final/recall_at_20"] > 5 * popular and 0 < m["final/mrr_at_20"] < m["final/recall_at_20"]
    assert load_artifact(Path(client.download_artifacts(r.info.run_id, "artifacts/dense.pt",
                                                        str(tmp_path / "dl")))).config()["max_len"] == 10
    mlflow.set_tracking_uri(None)
