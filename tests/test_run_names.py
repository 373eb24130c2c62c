"""Readable run names (model, data, only the overridden keys, numbers to 3 significant digits) and experiments marked
as model-training experiments, so MLflow 3's UI opens them on the runs table."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from recsys.tracking import EXPERIMENT_KIND_TAG, init_store, readable_run_name


def test_run_name_keeps_overridden_keys_rounds_numbers_and_drops_paths():
    over = ["data=ml-100k", "finetune.epochs=1", "finetune.lr=2.9375384576328295e-05", "hparams_search=prune_lr",
            "prune.ratio=0.23333333", "tracking.uri=sqlite:///x.db", "paths.root_dir=/tmp/x", "model.factors=8",
            "seed=3", "+extra.flag=true", "quant=ptq"]
    assert readable_run_name("neumf-ml-100k", over) == (
        "neumf-ml-100k finetune.epochs=1 finetune.lr=2.94e-05 prune.ratio=0.233 model.factors=8 seed=3 "
        "extra.flag=true quant=ptq")
    assert readable_run_name("neumf-ml-100k", []) == "neumf-ml-100k"


def test_experiments_are_model_training_experiments(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp_id = init_store(uri, "fresh")
    client = MlflowClient(uri)
    assert client.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    old = client.create_experiment("made-before")  # an older store's experiment gets the tag when next used
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    assert init_store(uri, "made-before") == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
