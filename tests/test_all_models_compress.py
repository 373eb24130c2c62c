"""Every registered compression technique on every model family: NeuMF (ranking, ml-100k), DeepFM (CTR, Criteo sample)
and GRU4Rec / SASRec (sessions, a tiny copy of the YooChoose sample), each as a full pipeline job (dense -> compress ->
fine-tune -> export -> reload with identical scores -> measure). Techniques are discovered from the registry, so new
ones are picked up.

Slow (one job per pair; the dense model of each family is trained once and cached for the module):
    pytest -m slow tests/test_all_models_compress.py
"""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from recsys.compress.base import ORDER, methods
from recsys.export.artifact import load_artifact, save_artifact
from recsys.pipeline import run

CONF = str(Path(__file__).resolve().parents[1] / "conf")
MODELS = {
    "neumf": ["data=ml-100k", "model.factors=4", "model.mlp_layers=[8,4]", "train.batch_size=4096"],
    "deepfm": ["data=criteo", "model.embed_dim=4", "model.mlp_layers=[8,4]", "train.batch_size=1024"],
    "gru4rec": ["data=yoochoose", "model.hidden_size=16", "model.n_sample=64", "model.batch_size=64",
                "train.optimizer=adagrad", "train.lr=0.05"],
    "sasrec": ["data=yoochoose", "model.hidden_size=16", "model.n_heads=2", "model.layers=1", "model.max_len=10",
               "model.n_sample=64", "model.batch_size=64"],
}
# The session models train on the tiny copy of the YooChoose sample (tests/tiny_data.py: its first ~3,000 training
# clicks, whole sessions): the dense GRU4Rec / SASRec of the whole sample took 50 / 90 s here, and what is checked is
# each technique's promise on the shipped artifact, not the model's quality.
TINY = {"gru4rec", "sasrec"}
# Session models serve eagerly: their pyfunc logging (tracking.log_model) only copies the artifact and runs MLflow's
# requirement inference (a subprocess that loads the model, ~2 per job, the costliest part of a tiny job; its errors
# are swallowed by MLflow), so it proves nothing here and is off for them. The ranking family keeps it: its pyfunc
# logging exports and times each artifact format (ONNX / eager), a real check per technique. CTR on a feature table
# has no serving contract (nothing logged).
LOG_MODEL = {"gru4rec": "tracking.log_model=false", "sasrec": "tracking.log_model=false"}
# technique settings that must fit the tiny test models (e.g. a rank below the embedding width)
TECHNIQUE_OVERRIDES = {"lowrank": ["lowrank.rank=2"]}
STUDENT = {"neumf": ["distill.student.factors=2"],
           "deepfm": ["distill.student.factors=null", "distill.student.embed_dim=2"],
           "gru4rec": ["distill.student.factors=null", "distill.student.hidden_size=8"],
           "sasrec": ["distill.student.factors=null", "distill.student.hidden_size=8"]}
# pairs a technique's own check rejects today (by design or not yet implemented there); strict xfail, so each
# flips to a failure -- and must be removed from here -- the day the technique supports the model.
UNSUPPORTED = {
    ("deepfm", "distill", "ranking"): "distill=ranking is defined for the ranking family only",
    ("gru4rec", "distill", "ranking"): "distill=ranking is defined for the ranking family only",
    ("sasrec", "distill", "ranking"): "distill=ranking is defined for the ranking family only",
    ("gru4rec", "lowrank", "svd"): "GRU4Rec has no plain Embedding/Linear to factorise (its item table is shared "
                                   "with the GRU input); lowrank=svd says so instead of shipping the dense model",
}
PAIRS = [pytest.param(m, g, meth, id=f"{m}-{g}-{meth}",
                      marks=[pytest.mark.xfail(strict=True, reason=UNSUPPORTED[(m, g, meth)])]
                      if (m, g, meth) in UNSUPPORTED else [])
         for m in MODELS for g in ORDER for meth in methods(g) if meth != "none"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("all-models")


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("model,group,method", PAIRS)
def test_technique_runs_on_model(root, shared_data_dir, tiny_data_dir, model, group, method):
    data_dir = tiny_data_dir if model in TINY else shared_data_dir
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            f"paths.root_dir={root}", f"paths.data_dir={data_dir}", f"model={model}", *MODELS[model],
            f"{group}={method}", *TECHNIQUE_OVERRIDES.get(group, []),
            # the no-KD twin (distill.baseline) is a second student training; tests/test_distill.py covers it
            *(STUDENT[model] + ["distill.baseline=false"] if group == "distill" else []), "train.epochs=1",
            "finetune.epochs=1",
            "finetune.data_fraction=0.1", "bench.requests=50", "bench.warmup=5", "bench.full_catalogue_requests=3",
            "bench.throughput_repeats=2", "bench.throughput_batch=512", "trainer.enable_progress_bar=false",
            f"tracking.run_name={model}-{group}-{method}", *([LOG_MODEL[model]] if model in LOG_MODEL else [])])
    run(cfg)
    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    r = [x for x in client.search_runs([exp.experiment_id]) if x.info.run_name == f"{model}-{group}-{method}"][-1]
    m = r.data.metrics
    for key in ("final/artifact_bytes", "final/latency_p50_ms", "final/compression_ratio", "final/speedup_p50"):
        assert key in m, key
    quality = {"neumf": "hr_at_10", "deepfm": "auc", "gru4rec": "recall_at_20", "sasrec": "recall_at_20"}[model]
    assert 0.0 <= m[f"final/{quality}"] <= 1.0
    # what the technique promises, on the shipped (reloaded) artifact's figures
    promise = PROMISES[(group, method)]
    dense, final = {k[6:]: v for k, v in m.items() if k.startswith("dense/")}, \
        {k[6:]: v for k, v in m.items() if k.startswith("final/")}
    for key in promise:
        assert final[key] < dense[key], f"{group}={method} on {model}: final/{key}={final[key]} >= dense {dense[key]}"
    assert r.data.tags["artifact_format"] in FORMATS[(group, method)], r.data.tags["artifact_format"]
    # the reported bytes are the shipped file's bytes; the artifact round-trips: re-encoding the reloaded model gives
    # the same bytes and identical scores (the job itself refused a reload whose scores differ from its model's)
    art = Path(client.download_artifacts(r.info.run_id, "artifacts/compressed.pt", str(root / "dl" / r.info.run_id)))
    assert art.stat().st_size == final["artifact_bytes"]
    a = load_artifact(art)
    again = root / "dl" / r.info.run_id / "re" / "compressed.pt"   # same name: torch.save records it
    assert save_artifact(a, again, fmt=r.data.tags["artifact_format"]) == final["artifact_bytes"]
    b = load_artifact(again)
    inputs = EXAMPLE_INPUTS[model](a)
    with torch.inference_mode():
        assert torch.equal(a.eval().score(*inputs), b.eval().score(*inputs))
    mlflow.set_tracking_uri(None)


def _pairs(model):
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, model.n_users, (64,), generator=g), torch.randint(0, model.n_items, (64,), generator=g))


def _table(model):
    g = torch.Generator().manual_seed(0)
    cat = torch.stack([torch.randint(0, d, (64,), generator=g) for d in model.field_dims], 1)
    return cat, torch.rand(64, model.n_dense, generator=g)


def _sessions(model):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, model.n_items, (16, 5), generator=g), torch.full((16,), 5)


EXAMPLE_INPUTS = {"neumf": _pairs, "deepfm": lambda m: _pairs(m) if m.n_users else _table(m), "gru4rec": _sessions,
                  "sasrec": _sessions}
# per technique, the figures that must be strictly smaller than the dense model's
PROMISES = {
    ("prune", "magnitude"): ["params_nonzero"],                 # fewer non-zeros
    ("prune", "structured"): ["params_total", "artifact_bytes"],  # smaller shapes
    ("quant", "ptq"): ["artifact_bytes"],                      # fewer bytes
    ("quant", "qat"): ["artifact_bytes"],
    ("lowrank", "svd"): ["params_total", "artifact_bytes"],
    ("distill", "kd"): ["params_total", "artifact_bytes"],     # a smaller student ships
    ("distill", "ranking"): ["params_total", "artifact_bytes"],
}
FORMATS = {
    ("prune", "magnitude"): ("sparse", "dense"), ("prune", "structured"): ("dense",),
    ("quant", "ptq"): ("quantized",), ("quant", "qat"): ("quantized",), ("lowrank", "svd"): ("lowrank",),
    ("distill", "kd"): ("dense",), ("distill", "ranking"): ("dense",),
}
