"""Issue 16, the file side of integrity: each job writes into its own directory (jobs started together never swap
artifacts), every write is temp file + rename, a damaged cache entry is named, removed and rebuilt, loads never
unpickle, names from config never leave the cache folder, and every table says where it came from."""
from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from recsys.errors import UnreadableFileError
from recsys.export.artifact import artifact_meta, load_artifact, save_artifact
from recsys.fileio import atomic_path, safe_name, write_text
from recsys.measure.size import count_params
from recsys.models import build_model
from recsys.pipeline import dense_cache_path, dense_model
from recsys.provenance import provenance, provenance_md, provenance_tags
from recsys.tasks.base import get_family

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
TINY = ["train.epochs=1", "train.batch_size=4096", "model.factors=4", "model.mlp_layers=[8,4]",
        "bench.requests=20", "bench.warmup=5", "bench.full_catalogue_requests=3", "bench.throughput_repeats=2",
        "bench.throughput_batch=512", "trainer.enable_progress_bar=false", "tracking.log_model=false"]


def make_cfg(tmp_path: Path, data_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[f"paths.root_dir={tmp_path}", f"paths.data_dir={data_dir}", *TINY,
                                            *overrides])


# ------------------------------------------------------------------------------------- item 1: one directory per job
@pytest.mark.realdata
def test_jobs_started_together_each_log_their_own_artifact(tmp_path, shared_data_dir):
    """The issue's race with real processes, made certain: both jobs get the *same* Hydra output dir (what two jobs
    started in the same second get). Each run's logged compressed.pt is downloaded, reloaded, and its bytes and
    non-zeros must be that run's own final/artifact_bytes and final/params_nonzero."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    env = {**os.environ, "RECSYS_DATA_DIR": str(shared_data_dir), "PYTHONPATH": str(ROOT)}
    env.pop("RECSYS_TRACKING_URI", None)
    from recsys.tracking import init_store

    init_store(uri, "race")  # a fresh sqlite store is created once before parallel jobs (DESIGN.md)
    shared_out = tmp_path / "outputs" / "same-second"
    procs = [subprocess.Popen([sys.executable, str(ROOT / "run.py"), *TINY, "prune=magnitude", f"prune.ratio={r}",
                               "finetune.epochs=0", f"paths.root_dir={tmp_path}", "tracking.experiment=race",
                               f"hydra.run.dir={shared_out}"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0.2, 0.8)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.data.params["prune.ratio"] for r in runs) == ["0.2", "0.8"]
    job_dirs = set()
    for r in runs:
        m = r.data.metrics
        d = client.download_artifacts(r.info.run_id, "artifacts/compressed.pt", tempfile.mkdtemp(dir=tmp_path))
        assert os.path.getsize(d) == m["final/artifact_bytes"], r.data.params["prune.ratio"]
        assert count_params(load_artifact(d))["params_nonzero"] == m["final/params_nonzero"]
        job_dirs.add(r.data.tags["job_dir"])
        assert r.info.run_id in r.data.tags["job_dir"]
        # item 5: the run's results.md and tags say where the numbers came from
        results = Path(client.download_artifacts(r.info.run_id, "results.md", tempfile.mkdtemp(dir=tmp_path)))
        assert "Made with: commit" in results.read_text() and "torch 2." in results.read_text()
        assert r.data.tags["provenance.torch"] == torch.__version__ and "provenance.cpu" in r.data.tags
    assert len(job_dirs) == 2
    a, b = runs
    assert a.data.metrics["final/params_nonzero"] != b.data.metrics["final/params_nonzero"]


class _Payload:
    """Unpickling this creates a marker file: what a tampered artifact would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------- item 2: atomic writes, damaged entries rebuilt
def test_atomic_path_leaves_the_old_file_when_the_writer_dies(tmp_path):
    target = tmp_path / "entry.pt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["entry.pt"]  # no temp file left behind


def test_save_artifact_writes_through_a_temp_file(tmp_path, monkeypatch):
    """A save that dies half way (a kill, a full disk) leaves no file at the artifact's path."""
    model = build_model({"_target_": "recsys.models.ncf.GMF", "n_users": 5, "n_items": 7, "factors": 2})
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        Path(f).write_bytes(Path(f).read_bytes()[:100])  # what a kill leaves: a truncated zip
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        save_artifact(model, tmp_path / "a.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.realdata
def test_truncated_dense_cache_entry_is_named_removed_and_rebuilt(tmp_path, shared_data_dir, capsys):
    """``truncate -s`` on a cache entry (what a killed write leaves), then the same job: a warning names the file,
    the job trains again and succeeds, and the entry is whole again; then the same with a pickle payload there. The data name holds ``../`` runs: the entry must
    stay under <cache_dir>/dense (item 7)."""
    cfg = make_cfg(tmp_path, shared_data_dir, "data.name=../../../../escaped", "train.num_negatives=1")
    family = get_family(cfg.model.task)
    data = family.load_data(cfg)
    _, info = dense_model(cfg, data, False, family)
    assert info["cache_hit"] == 0.0
    entries = list((tmp_path / ".cache" / "dense").glob("*.pt"))
    # item 7: the entry is under .cache/dense, nothing named after the data is written anywhere else
    assert len(entries) == 1
    assert not [p for p in tmp_path.parent.rglob("*escaped*") if (tmp_path / ".cache" / "dense") not in p.parents]
    entry = entries[0]
    whole = entry.stat().st_size
    subprocess.run(["truncate", "-s", str(whole // 2), str(entry)], check=True)
    with pytest.warns(UserWarning, match=re.escape(str(entry))):
        model, info = dense_model(cfg, data, False, family)
    assert info["cache_hit"] == 0.0
    assert str(entry) in capsys.readouterr().out
    assert entry.stat().st_size == whole
    assert count_params(load_artifact(entry))["params_total"] == count_params(model)["params_total"]
    _, info = dense_model(cfg, data, False, family)  # and it is a good cache entry again
    assert info["cache_hit"] == 1.0
    # item 6 at the same path: a pickle payload where the entry was is named, never unpickled, and replaced
    marker = tmp_path / "PWNED"
    torch.save({"format": "dense", "spec": {}, "payload": _Payload(marker), "meta": {"train_info": {}}}, entry)
    with pytest.warns(UserWarning, match="NOT loaded"):
        _, info = dense_model(cfg, data, False, family)
    assert info["cache_hit"] == 0.0 and not marker.exists()
    assert count_params(load_artifact(entry))["params_total"] == count_params(model)["params_total"]


# ------------------------------------------------------------------------------------ item 6: loads never unpickle
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_payload_at_artifact_and_cache_paths_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "PWNED"
    cfg = make_cfg(tmp_path, tmp_path)
    paths = [tmp_path / "outputs" / "compressed.pt", dense_cache_path(cfg, "0123456789abcdef0123")]
    blob = {"format": "dense", "spec": {"name": "gmf"}, "payload": _Payload(marker), "meta": {"x": _Payload(marker)}}
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        if writer == "torch.save":
            torch.save(blob, path)
        else:
            with open(path, "wb") as f:
                pickle.dump(blob, f)
        for load in (load_artifact, artifact_meta):
            with pytest.raises(UnreadableFileError, match="NOT loaded") as e:
                load(path)
            assert str(path) in str(e.value)
        assert not marker.exists()


def test_artifacts_of_every_format_load_with_weights_only(tmp_path):
    """The codecs store only tensors and plain values, so the safe loader reads each one back."""
    from recsys.compress.quant import QuantConfig, quantize_
    from recsys.export.formats import artifact_format

    spec = {"_target_": "recsys.models.ncf.NeuMF", "n_users": 30, "n_items": 40, "factors": 4, "mlp_layers": [8, 4]}
    users, items = torch.arange(30).repeat(2), torch.arange(60) % 40
    for make in ("dense", "sparse", "quantized"):
        torch.manual_seed(0)
        m = build_model(spec).eval()
        if make == "sparse":
            with torch.no_grad():
                for p in m.parameters():
                    p[p.abs() < p.abs().quantile(0.8)] = 0.0
        if make == "quantized":
            quantize_(m, QuantConfig(bits=4))
        fmt = artifact_format(m, sparse_ok=True)
        assert fmt == make
        save_artifact(m, tmp_path / f"{make}.pt", fmt=fmt)
        back = load_artifact(tmp_path / f"{make}.pt")
        assert torch.equal(m.score(users, items), back.score(users, items)), make


# ---------------------------------------------------------------------------------- item 7: names used in paths
@pytest.mark.parametrize("name", ["../../x", "../../../../../tmp/x", "/etc/passwd", "a/b", "..", ".", "", "ml-100k"])
def test_names_in_paths_stay_one_component(tmp_path, name):
    s = safe_name(name)
    assert s and "/" not in s and ".." not in s and not s.startswith(".")
    cfg = make_cfg(tmp_path, tmp_path, f"data.name='{name}'", f"model.name='{name}'")
    path = dense_cache_path(cfg, "k")
    assert path.resolve().parent == (tmp_path / ".cache" / "dense").resolve()
    assert safe_name("ml-100k") == "ml-100k"  # ordinary names are kept as they are


# --------------------------------------------------------------------------- item 5: tables say where they came from
def test_provenance_names_commit_cpu_versions_and_threads():
    import numpy as np

    p = provenance()
    assert len(p["commit"]) == 40 and isinstance(p["dirty"], bool)
    assert p["torch"] == torch.__version__ and p["numpy"] == np.__version__
    assert p["torch_threads"] == torch.get_num_threads() and p["cpu"]
    assert p["mkl"] != "" and "OMP_NUM_THREADS" in p
    line = provenance_md(p)
    assert p["commit"] in line and p["cpu"] in line and f"torch {torch.__version__}" in line
    tags = provenance_tags(p)
    assert tags["git_commit"].startswith(p["commit"]) and tags["provenance.numpy"] == np.__version__
