"""A small synthetic MLflow store shaped like the pipeline's runs (stages, params, tags), shared by the report,
notebook and browser tests: ``build_store(root)`` -> (uri, experiment, {run_id: logged metrics})."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

EXPERIMENT = "synthetic-compress"

# technique settings x seeds: (prune.ratio, prune.method, quant.bits, seeds)
SETTINGS = [
    (0.0, "magnitude", 32, (1, 2, 3)),      # dense
    (0.5, "magnitude", 32, (1, 2)),
    (0.8, "magnitude", 32, (1, 2)),
    (0.5, "structured", 32, (1,)),
    (0.0, "magnitude", 8, (1,)),            # quant only
]


def _metrics(rng: np.random.Generator, ratio: float, bits: int) -> dict[str, float]:
    dense = {"hr_at_10": 0.66 + rng.normal(0, 0.005), "ndcg_at_10": 0.39 + rng.normal(0, 0.004),
             "recall_at_10": 0.071 + rng.normal(0, 0.002), "val_hr_at_10": 0.65 + rng.normal(0, 0.005),
             "params_total": 1_234_567.0, "params_nonzero": 1_234_567.0, "artifact_bytes": 4_939_871.0,
             "latency_p50_ms": 0.061 + rng.normal(0, 0.001), "latency_p99_ms": 0.083 + rng.normal(0, 0.002),
             "latency_full_p50_ms": 1.02 + rng.normal(0, 0.01), "throughput_per_s": 8.1e6 + rng.normal(0, 1e5)}
    out = {f"dense/{k}": float(v) for k, v in dense.items()}
    if ratio == 0 and bits == 32:
        out.update({f"final/{k}": float(v) for k, v in dense.items()})
        return out
    keep = 1 - ratio
    comp = dict(dense)
    comp["hr_at_10"] = dense["hr_at_10"] - 0.2 * ratio ** 2 - (0.01 if bits < 32 else 0) + rng.normal(0, 0.003)
    comp["ndcg_at_10"] = dense["ndcg_at_10"] - 0.15 * ratio ** 2 + rng.normal(0, 0.003)
    comp["recall_at_10"] = dense["recall_at_10"] - 0.02 * ratio ** 2 + rng.normal(0, 0.001)
    comp["val_hr_at_10"] = comp["hr_at_10"] + rng.normal(0, 0.004)
    comp["params_nonzero"] = float(round(dense["params_total"] * keep))
    comp["artifact_bytes"] = float(round(dense["artifact_bytes"] * keep * 1.6 * bits / 32 if ratio else
                                         dense["artifact_bytes"] * bits / 32)) + 1733.0
    comp["latency_p50_ms"] = dense["latency_p50_ms"] * (1.05 if bits < 32 else 1.0) + rng.normal(0, 0.001)
    out.update({f"compressed/{k}": float(v) for k, v in comp.items()})
    fine = dict(comp)
    fine["hr_at_10"] = comp["hr_at_10"] + 0.12 * ratio ** 2 + rng.normal(0, 0.002)
    fine["val_hr_at_10"] = fine["hr_at_10"] + rng.normal(0, 0.003)
    out.update({f"finetuned/{k}": float(v) for k, v in fine.items()})
    out.update({f"final/{k}": float(v) for k, v in fine.items()})
    out["final/compression_ratio"] = dense["artifact_bytes"] / fine["artifact_bytes"]
    out["final/speedup_p50"] = dense["latency_p50_ms"] / fine["latency_p50_ms"]
    out["final/latency_onnx_p50_ms"] = fine["latency_p50_ms"] * 0.42 + rng.normal(0, 0.0005)
    return out


def build_store(root: Path, experiment: str = EXPERIMENT) -> tuple[str, str, dict[str, dict[str, float]]]:
    """Create the store under ``root/mlruns``; returns (uri, experiment name, logged metrics per run id)."""
    from recsys.tracking import init_store

    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    exp_id = init_store(uri, experiment, artifact_location=str(root / "mlruns" / "artifacts"))
    client = MlflowClient(uri)
    rng = np.random.default_rng(7)
    logged: dict[str, dict[str, float]] = {}
    now = int(time.time() * 1000)
    for ratio, method, bits, seeds in SETTINGS:
        for seed in seeds:
            over = f"prune.ratio={ratio},prune.method={method},quant.bits={bits},seed={seed}"
            run = client.create_run(exp_id, run_name=f"neumf-ml-100k {over}",
                                    tags={"dataset": "ml-100k", "model": "neumf", "overrides": over,
                                          "hydra_mode": "MULTIRUN", "sweep_dir": "multirun/synthetic"})
            rid = run.info.run_id
            params = {"seed": seed, "data.name": "ml-100k", "model.name": "neumf", "model.factors": 8,
                      "prune.ratio": ratio, "prune.method": method, "quant.bits": bits, "finetune.lr": 0.001,
                      "paths.root_dir": f"/tmp/job-{rid[:6]}", "tracking.experiment": experiment,
                      "objectives": "['final/val_hr_at_10']"}
            m = _metrics(rng, ratio, bits)
            client.log_batch(rid, metrics=[Metric(k, v, now, 0) for k, v in m.items()],
                             params=[Param(k, str(v)) for k, v in params.items()], tags=[RunTag("seed", str(seed))])
            client.set_terminated(rid, "FINISHED")
            logged[rid] = m
    # a failed job and a bookkeeping run: neither may show up in a table
    bad = client.create_run(exp_id, run_name="crashed", tags={"dataset": "ml-100k"})
    client.log_batch(bad.info.run_id, metrics=[Metric("final/hr_at_10", 0.999, now, 0)],
                     params=[Param("seed", "9"), Param("prune.ratio", "0.3")])
    client.set_terminated(bad.info.run_id, "FAILED")
    parent = client.create_run(exp_id, run_name="study:x", tags={"recsys.kind": "study", "optuna_study": "x"})
    client.log_batch(parent.info.run_id, metrics=[Metric("final/hr_at_10", 0.5, now, 0)])
    client.set_terminated(parent.info.run_id, "FINISHED")
    return uri, experiment, logged
