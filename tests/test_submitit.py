"""Hydra's submitit launcher (the cluster path, `hydra/launcher=submitit_slurm` on SLURM) run locally: the README's
`python run.py -m hydra/launcher=submitit_local ...` multirun of 2 jobs lands 2 MLflow runs; the README's SLURM
command composes with the keys it documents (no cluster here to submit to)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.epochs=1", "train.batch_size=8192", "model.factors=4", "model.mlp_layers=[8,4]", "bench.requests=30",
        "bench.warmup=5", "bench.full_catalogue_requests=3", "bench.throughput_repeats=2", "bench.throughput_batch=512",
        "trainer.enable_progress_bar=false", "eval.full_ranking=false", "tracking.log_model=false"]


def readme_command(launcher: str) -> list[str]:
    """The README's `python run.py -m hydra/launcher=<launcher> ...` line, split like a shell would."""
    lines = [ln.strip() for ln in (ROOT / "README.md").read_text().splitlines()
             if re.match(rf"\s*python run.py -m hydra/launcher={launcher}\b", ln)]
    assert len(lines) == 1, f"README: expected one `python run.py -m hydra/launcher={launcher}` line, got {lines}"
    return shlex.split(lines[0].split(" #")[0])


@pytest.mark.realdata
def test_submitit_local_multirun_lands_two_runs(tmp_path, shared_data_dir):
    cmd = readme_command("submitit_local")
    env = {**os.environ, "RECSYS_DATA_DIR": str(shared_data_dir), "RECSYS_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("RECSYS_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, *cmd[1:], f"hydra.sweep.dir={tmp_path}/multirun", *TINY], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in proc.stdout + proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("recsys-compress").experiment_id])
    assert len(runs) == 2
    assert all(r.info.status == "FINISHED" and "dense/hr_at_10" in r.data.metrics for r in runs)
    assert sorted(r.data.tags["job_num"] for r in runs) == ["0", "1"]
    assert {r.data.params["train.lr"] for r in runs} == {"0.001", "0.002"}
    # each job ran as its own submitit job (its own process and log files)
    assert len(list((tmp_path / "multirun" / ".submitit").glob("*/*_log.out"))) == 2


def test_submitit_slurm_command_composes():
    """The README's SLURM line: its overrides land on the submitit SLURM launcher's config (partition, time, cpus)."""
    from hydra import compose, initialize_config_dir

    cmd = readme_command("submitit_slurm")
    overrides = [a for a in cmd[2:] if a.startswith("hydra")]  # the launcher's part (compose runs no sweep)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    given = dict(a.split("=", 1) for a in overrides if a.startswith("hydra.launcher."))
    assert {"hydra.launcher.partition", "hydra.launcher.timeout_min", "hydra.launcher.cpus_per_task"} <= set(given)
    for key, value in given.items():
        assert str(launcher[key.removeprefix("hydra.launcher.")]) == value
