"""Log a pipeline job's models as MLflow ``pyfunc`` models and register the shipped one in the Model Registry as a
version of ``tracking.registered_model`` (default ``<model>-<data>``), tagged with its compression settings and the
run's headline metrics."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import torch

from recsys.export.artifact import load_artifact
from recsys.serve.data import ServeData, serve_data
from recsys.serve.runtime import pick_runtime

MODEL_CODE = Path(__file__).with_name("model_code.py")
HEADLINE = ("hr_at_10", "ndcg_at_10", "recall_at_10", "recall_at_20", "mrr_at_20", "auc", "artifact_bytes",
            "latency_p50_ms", "latency_full_p50_ms", "compression_ratio")
SETTING_PREFIXES = ("prune.", "quant.", "distill.", "lowrank.", "finetune.")
SERVE_PACKAGES = ("recsys-compress", "mlflow", "torch", "numpy", "onnxruntime", "pydantic")


def serve_requirements() -> list[str]:
    """The packages the served model imports, pinned to this environment's versions. Naming them skips MLflow's
    requirement inference, which loads the model in a subprocess: measured 14.5 s -> 0.4 s per logged model."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in SERVE_PACKAGES:
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return out


def input_example(family: str, data: ServeData) -> list[dict[str, Any]]:
    """One record of the contract (the signature itself is inferred by MLflow from ``RecsysPyfunc.predict``'s type
    hint, ``list[Request]``)."""
    if family == "session":
        return [{"session": data.item_ids[:3].tolist(), "k": 10}]
    return [{"user_id": data.user_ids[0].item(), "k": 10}]


def log_pyfunc(name: str, artifact: str | Path, family: str, data: ServeData, workdir: str | Path, threads: int = 1,
               registered_model: str | None = None, tags: dict[str, Any] | None = None,
               n_users: int | None = None) -> dict[str, Any]:
    """Log one artifact as a pyfunc model named ``name`` in the active run (registered when asked); returns what was
    chosen: runtime, its timings, model URI, registered version."""
    workdir = Path(workdir) / f"serve-{name}"
    workdir.mkdir(parents=True, exist_ok=True)
    data_path = data.save(workdir / "serve_data.npz")
    artifacts = {"artifact": str(artifact), "serve_data": str(data_path)}
    if family == "session":
        runtime, timings = "eager", {"eager": "session models serve eagerly (recurrent step, not exported)"}
    else:
        runtime, timings, onnx = pick_runtime(load_artifact(artifact), n_users or len(data.user_ids), data.n_items,
                                              workdir, threads)
        if onnx is not None:
            artifacts["onnx"] = str(onnx)
    config = {"family": family, "runtime": runtime, "threads": int(threads)}
    info = mlflow.pyfunc.log_model(
        name=name, python_model=str(MODEL_CODE), artifacts=artifacts, model_config=config,
        input_example=input_example(family, data), pip_requirements=serve_requirements(),
        registered_model_name=registered_model or None, await_registration_for=60,
        metadata={"runtime": runtime, "runtime_full_catalogue_ms": {k: (round(v, 4) if isinstance(v, float) else v)
                                                                    for k, v in timings.items()}})
    out = {"runtime": runtime, "timings": timings, "model_uri": info.model_uri, "version": None}
    if registered_model:
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        for k, v in {**(tags or {}), "serve_runtime": runtime}.items():
            client.set_model_version_tag(registered_model, version, k, str(v))
        out["version"] = version
    return out


def version_tags(cfg: dict[str, Any], final: dict[str, float], ctx_params: dict[str, Any] | None,
                 artifact_format: str) -> dict[str, Any]:
    """Compression settings (the techniques' config keys, those in use) and the run's headline metrics."""
    from recsys.tracking import flatten

    flat = flatten(cfg)
    tags: dict[str, Any] = {"model": cfg["model"]["name"], "data": cfg["data"]["name"], "artifact_format": artifact_format}
    from recsys.compress.base import active_groups

    used = {p for p in SETTING_PREFIXES if p != "finetune." and p[:-1] in active_groups(cfg)}
    if used:
        used.add("finetune.")  # fine-tuning settings matter only when something was compressed
    for k, v in flat.items():
        if k.startswith(tuple(used)) and v is not None and not isinstance(v, (list, dict)):
            tags[k] = v
    tags.update({k: v for k, v in (ctx_params or {}).items()})
    tags.update({f"final/{k}": f"{final[k]:.6g}" for k in HEADLINE if k in final})
    return tags


def log_job_models(cfg: Any, family: Any, data: Any, out_dir: Path, dense_path: Path, shipped_path: Path | None,
                   final: dict[str, float], fmt: str = "dense", ctx_params: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """The pipeline's hook: ``dense`` and (when compressed) ``shipped`` pyfunc models; the shipped one is registered.
    Returns ``{}`` with a printed reason when the family has no serving contract (CTR on a feature table)."""
    try:
        sdata = serve_data(family.name, data)
    except ValueError as e:
        print(f"[serve] not logged as an MLflow model: {e}")
        mlflow.set_tag("serve_skipped", str(e)[:500])
        return {}
    threads_before = torch.get_num_threads()
    try:
        return _log_job_models(cfg, family, sdata, data, out_dir, dense_path, shipped_path, final, fmt, ctx_params)
    finally:
        # MLflow loads each logged model in-process to check its input example, and a loaded model pins the torch
        # threads it serves with: give the job's own setting back (a later job in this process would train on them)
        torch.set_num_threads(threads_before)


def _log_job_models(cfg: Any, family: Any, sdata: Any, data: Any, out_dir: Path, dense_path: Path,
                    shipped_path: Path | None, final: dict[str, float], fmt: str, ctx_params: dict[str, Any] | None
                    ) -> dict[str, Any]:
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    name = cfg.tracking.get("registered_model") or None
    threads = int(cfg.bench.threads)
    n_users = getattr(data, "n_users", None) or getattr(getattr(data, "split", None), "n_users", None)
    tags = version_tags(plain, final, ctx_params, fmt)
    out = {"dense": log_pyfunc("dense", dense_path, family.name, sdata, out_dir, threads,
                               registered_model=name if shipped_path is None else None,
                               tags={**tags, "stage": "dense"}, n_users=n_users)}
    if shipped_path is not None:
        out["shipped"] = log_pyfunc("shipped", shipped_path, family.name, sdata, out_dir, threads,
                                    registered_model=name, tags={**tags, "stage": "shipped"}, n_users=n_users)
    for stage, r in out.items():
        mlflow.set_tag(f"serve_runtime_{stage}", r["runtime"])
        if r["version"]:
            mlflow.set_tag("registered_model", f"models:/{name}/{r['version']}")
            print(f"[serve] registered models:/{name}/{r['version']} (runtime {r['runtime']}: {r['timings']})")
    return out
