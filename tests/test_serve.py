"""Ship it: a tiny pipeline job on ml-100k logs its dense and its int8 model as MLflow pyfunc models, registers the
shipped one, and ``mlflow models serve -m models:/<name>/<version>`` answers ``/invocations`` with the same top-k as
the reloaded artifact scored here, independently (training items excluded, original ids)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from servers import free_port, wait_until_up

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.realdata


def serve_env(uri: str) -> dict[str, str]:
    """The server runs in this environment (--env-manager local): this checkout importable, the venv's bin on PATH."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def post(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def job(tmp_path_factory, shared_data_dir):
    from recsys.pipeline import run

    tmp = tmp_path_factory.mktemp("serve")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            f"paths.root_dir={tmp}", f"paths.data_dir={shared_data_dir}", "data=ml-100k", "train.epochs=1",
            "train.batch_size=4096", "model.factors=8", "model.mlp_layers=[16,8]", "quant=ptq", "quant.bits=8",
            "finetune.epochs=0", "bench.requests=20", "bench.warmup=5", "bench.full_catalogue_requests=5",
            "bench.throughput_repeats=2", "bench.throughput_batch=1024", "trainer.enable_progress_bar=false"])
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        run(cfg)
        # logging the models loads them in-process (MLflow checks the input example), and a served model pins its
        # own threads: the job must give the caller's setting back (a later job in the same process trained on 1)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    run_ = client.search_runs([client.get_experiment_by_name("recsys-compress").experiment_id])[0]
    yield tmp, uri, client, run_
    mlflow.set_tracking_uri(None)


def reference(run_id: str, client: MlflowClient, stage: str, users: list[int], k: int) -> list[list[int]]:
    """Top-k straight from the logged artifact file: score_all, the user's training items masked, ids mapped back."""
    from recsys.export.artifact import load_artifact

    local = Path(client.download_artifacts(run_id, f"artifacts/{'dense' if stage == 'dense' else 'compressed'}.pt"))
    model = load_artifact(local)
    z = np.load(client.download_artifacts(run_id, f"{stage}/artifacts/serve_data.npz"), allow_pickle=False)
    uid = {int(u): i for i, u in enumerate(z["user_ids"])}
    out = []
    with torch.inference_mode():
        for u in users:
            i = uid[u]
            s = model.score_all(torch.tensor([i]))[0].double().numpy()
            s[z["seen_indices"][z["seen_indptr"][i]:z["seen_indptr"][i + 1]]] = -np.inf
            out.append(z["item_ids"][np.argsort(-s, kind="stable")[:k]].tolist())
    return out


def test_job_registers_shipped_model_with_tags_signature_and_id_maps(job):
    tmp, uri, client, run_ = job
    name = "neumf-ml-100k"
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == 1 and versions[0].run_id == run_.info.run_id
    tags = versions[0].tags
    assert tags["quant.bits"] == "8" and tags["quant.method"] == "ptq" and tags["stage"] == "shipped"
    assert float(tags["final/hr_at_10"]) == pytest.approx(run_.data.metrics["final/hr_at_10"], rel=1e-5)
    assert tags["serve_runtime"] in ("eager", "onnx")
    info = mlflow.models.get_model_info(f"models:/{name}/1")
    record = info.signature.inputs.to_dict()[0]["properties"]   # inferred from predict's list[Request] type hint
    assert set(record) == {"user_id", "k", "item_ids", "session"} and not any(p["required"] for p in record.values())
    assert info.saved_input_example_info is not None
    arts = {a.path for a in client.list_artifacts(run_.info.run_id, "shipped/artifacts")}
    assert {"shipped/artifacts/serve_data.npz", "shipped/artifacts/compressed.pt"} <= arts
    assert run_.data.tags["serve_runtime_dense"] in ("eager", "onnx")  # the dense model is logged too


def test_pyfunc_in_process_matches_artifact_and_rejects_unknown_user(job):
    tmp, uri, client, run_ = job
    model = mlflow.pyfunc.load_model(f"runs:/{run_.info.run_id}/dense")
    users = [1, 7, 500]
    got = model.predict([{"user_id": u, "k": 10} for u in users])
    assert [a["item_ids"] for a in got] == reference(run_.info.run_id, client, "dense", users, 10)
    seen_first = reference(run_.info.run_id, client, "dense", [1], 1682)[0]
    z = np.load(client.download_artifacts(run_.info.run_id, "dense/artifacts/serve_data.npz"), allow_pickle=False)
    seen = set(z["item_ids"][z["seen_indices"][z["seen_indptr"][0]:z["seen_indptr"][1]]].tolist())  # user 1 = row 0
    assert z["user_ids"][0] == 1 and 50 in seen and seen_first[-1] in seen and seen_first[0] not in seen
    cands = [seen_first[-1], seen_first[5], 50, seen_first[0]]
    ranked = model.predict([{"user_id": 1, "k": 3, "item_ids": cands}])
    assert ranked[0]["item_ids"] == [seen_first[0], seen_first[5]]  # best first; training items never come back
    with pytest.raises(Exception, match="user_id 999999 is not in the model's training data"):
        model.predict([{"user_id": 999999, "k": 5}])


def test_mlflow_models_serve_answers_same_top_k(job):
    tmp, uri, client, run_ = job
    port = free_port()
    log = open(tmp / "serve.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
                             "models:/neumf-ml-100k/1", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=serve_env(uri), cwd=tmp, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/ping", proc, tmp / "serve.log", "mlflow models serve")
        users = [1, 7, 500]
        status, body = post(url + "/invocations", {"inputs": [{"user_id": u, "k": 10, "item_ids": []} for u in users]})
        assert status == 200, body
        served = mlflow.pyfunc.load_model("models:/neumf-ml-100k/1")
        local_model_ids = lambda recs: served.predict(recs)[0]["item_ids"]
        local = served.predict([{"user_id": u, "k": 10} for u in users])
        assert [p["item_ids"] for p in body["predictions"]] == [a["item_ids"] for a in local]
        np.testing.assert_allclose([p["scores"] for p in body["predictions"]], [a["scores"] for a in local], rtol=1e-5)
        assert [p["item_ids"] for p in body["predictions"]] == reference(run_.info.run_id, client, "shipped", users, 10)
        req = [{"user_id": 7, "k": 3, "item_ids": [1, 2, 3, 4, 5, 6, 1000, 1500]}]
        status, body = post(url + "/invocations", {"inputs": req})
        assert status == 200 and body["predictions"][0]["item_ids"] == local_model_ids(req)
        status, body = post(url + "/invocations", {"inputs": [{"user_id": 999999, "k": 2}]})
        assert status == 400 and "user_id 999999 is not in the model's training data" in body["message"]
        status, body = post(url + "/invocations", {"inputs": [{"user_id": 7, "k": "ten"}]})   # pydantic, per record
        assert status == 400 and "k" in body["message"], body
        status, body = post(url + "/invocations", {"dataframe_records": [{"user_id": 7, "k": 3}]})
        assert status == 400 and "'inputs'" in body["message"], body   # a type-hinted model takes {"inputs": [...]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_registry_listing_shows_each_version(job, capsys):
    """``python -m recsys.report --registry neumf-ml-100k``: one row per registered version, with its run, stage,
    runtime, settings and headline metrics; an unknown name is exit 2 naming what is registered."""
    from recsys.report.cli import main

    tmp, uri, client, run_ = job
    assert main(["--registry", "neumf-ml-100k", "--uri", uri]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 1 |")]
    assert "Model Registry: neumf-ml-100k (1 versions)" in out and len(rows) == 1, out
    assert run_.info.run_id[:12] in rows[0] and "| shipped |" in rows[0] and "quant.bits=8 quant.method=ptq" in rows[0]
    assert f"{run_.data.metrics['final/hr_at_10']:.6g}" in rows[0]
    assert main(["--registry", "nope", "--uri", uri]) == 2
    err = capsys.readouterr().err
    assert "no registered model named 'nope'" in err and "['neumf-ml-100k']" in err


def test_top_k_ties_at_the_kth_score_go_to_the_lower_index():
    """Integer scores with many ties: every row equals a full stable sort (score desc, index asc) with the excluded
    positions removed, also where more items than k tie at the k-th score (argpartition alone picks arbitrarily)."""
    from recsys.serve.pyfunc import top_k, top_k_rows

    rng = np.random.default_rng(0)
    for case in range(400):
        n_items, batch = int(rng.integers(1, 40)), int(rng.integers(1, 6))
        scores = rng.integers(0, 4, size=(batch, n_items)).astype(np.float32)
        ks = [int(rng.integers(1, n_items + 3)) for _ in range(batch)]
        rows = rng.integers(0, batch, size=3)
        cols = rng.integers(0, n_items, size=3)
        got = top_k_rows(scores, ks, rows, cols)
        for i in range(batch):
            ex = set(cols[rows == i].tolist())
            ref = [j for j in sorted(range(n_items), key=lambda j: (-scores[i, j], j)) if j not in ex][:ks[i]]
            assert got[i][0].tolist() == ref, (case, i)
            assert got[i][1].tolist() == scores[i, ref].tolist()
        one = top_k(scores[0], ks[0], cols[rows == 0])
        assert one[0].tolist() == got[0][0].tolist()
