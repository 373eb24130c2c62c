"""The stages of one Hydra job, in order: data -> dense model (trained or cached) -> compress (distill -> lowrank ->
prune -> quant) -> fine-tune -> evaluate every stage -> export + measure the reloaded artifact -> track.
Returns the sweep objective(s). Model-family specifics live in ``recsys.tasks.<task>.FAMILY``; techniques in
``recsys.compress``."""
from __future__ import annotations

import copy
import hashlib
import json
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from filelock import FileLock
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from recsys import checks, lifecycle, tracking
from recsys.compress.base import CompressContext, Technique, configured
from recsys.errors import ConfigError, UnreadableFileError
from recsys.export.artifact import artifact_meta, check_same_scores, load_artifact, save_artifact
from recsys.export.formats import artifact_format
from recsys.fileio import safe_name, write_text
from recsys.measure.size import count_params
from recsys.models import build_model
from recsys.provenance import with_provenance
from recsys.tasks.base import TaskFamily, get_family
from recsys.tasks.fit import StageTrainer


# ----------------------------------------------------------------------------------------------------------- helpers
def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def output_dir() -> Path:
    """Hydra's job output dir when run through Hydra, else a temporary dir (compose API, notebooks)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - HydraConfig raises ValueError when not initialised
        return Path(tempfile.mkdtemp(prefix="recsys-job-"))


def job_dir(run_id: str) -> Path:
    """This job's own folder for the files it ships: ``<Hydra output dir>/run-<MLflow run id>``. Hydra's dir is named
    by the second, so two jobs started together share it; the run id is unique, so what a run logs is what it wrote."""
    d = output_dir() / f"run-{safe_name(run_id)}"
    d.mkdir(parents=True, exist_ok=False)
    return d


def dense_cache_path(cfg: DictConfig, key: str) -> Path:
    """Where the dense model of this config is cached: under ``<cache_dir>/dense/``, whatever the names hold."""
    return Path(cfg.paths.cache_dir) / "dense" / f"{safe_name(cfg.model.name)}-{safe_name(cfg.data.name)}-{key}.pt"


def hydra_tags() -> dict[str, Any]:
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except Exception:  # noqa: BLE001
        return {}
    tags = {"hydra_mode": str(hc.mode).split(".")[-1], "overrides": ",".join(hc.overrides.task) or "(none)"}
    if tags["hydra_mode"] == "MULTIRUN":
        tags.update(sweep_id=str(Path(hc.sweep.dir).name) + "/" + str(hc.sweep.dir), sweep_dir=hc.sweep.dir,
                    job_num=hc.job.num)
    return tags


def run_name(cfg: DictConfig) -> str:
    if cfg.tracking.get("run_name"):
        return str(cfg.tracking.run_name)
    base = f"{cfg.model.name}-{cfg.data.name}"
    try:
        from hydra.core.hydra_config import HydraConfig

        return tracking.readable_run_name(base, list(HydraConfig.get().overrides.task))
    except Exception:  # noqa: BLE001
        return base


# ------------------------------------------------------------------------------------------------------------ stages
def dense_model(cfg: DictConfig, data: Any, logger: Any, family: TaskFamily | None = None
                ) -> tuple[torch.nn.Module, dict[str, float]]:
    """The trained dense model: from the cache keyed by (data, model, train, seed), else trained (once, under a lock).
    A family may initialise it first (``family.pretrain``: NeuMF from GMF and MLP), from dense models of its own."""
    family = family or get_family(cfg.model.task)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    # pre-training settings change nothing unless pre-training is on, so they stay out of the key then
    key_model = model_cfg if model_cfg.get("pretrain") else {k: v for k, v in model_cfg.items()
                                                              if not k.startswith("pretrain")}
    data_tags = family.data_summary(data)[0]
    # Keys set to null mean "not used" (e.g. train.patience), so adding an optional key keeps existing caches valid;
    # use_cache=false retrains and refreshes the same entry; the divergence guard only stops runs that are never cached;
    # steps_per_call changes Lightning's loop, not the steps.
    train_cfg = {k: v for k, v in OmegaConf.to_container(cfg.train, resolve=True).items()
                 if v is not None and k not in ("use_cache", "divergence_factor", "steps_per_call")}
    parts = ["dense", OmegaConf.to_container(cfg.data, resolve=True), data_tags, key_model, train_cfg, cfg.seed]
    if OmegaConf.select(cfg, "trainer.strategy") == "ddp":  # DDP-trained weights differ (rank shards): own entry
        parts.append({"ddp_devices": OmegaConf.select(cfg, "trainer.devices")})
    key = cache_key(*parts)
    path = dense_cache_path(cfg, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=6 * 3600):
        if path.exists() and cfg.train.get("use_cache", True):
            try:
                info = dict(artifact_meta(path, "dense cache entry")["train_info"])
                model = load_artifact(path, "dense cache entry")
            except (UnreadableFileError, KeyError, RuntimeError, ValueError) as e:
                # a damaged entry (a killed write from before writes were atomic, a full disk, a tampered file) must
                # not poison every later run: say which file, remove it, train again
                warnings.warn(f"[dense] unreadable cache entry {path} removed and rebuilt: {e}", stacklevel=2)
                print(f"[dense] WARNING: unreadable cache entry {path} removed and rebuilt: {e}")
                path.unlink(missing_ok=True)
            else:
                info["cache_hit"] = 1.0
                print(f"[dense] loaded from cache: {path}")
                return model, info
        L.seed_everything(cfg.seed, workers=True)
        model = build_model(family.model_spec(model_cfg, data))
        info, train_kw = family.pretrain(model, cfg, data, lambda sub: dense_model(sub, data, False, family))
        info.update(StageTrainer(family, data, cfg, logger).train(model, "dense", **train_kw))
        info["cache_hit"] = 0.0
        save_artifact(model, path, meta={"train_info": info, "key": key, **data_tags, "model": cfg.model.name})
        return model, info


def export_and_measure(model: torch.nn.Module, data: Any, cfg: DictConfig, family: TaskFamily, name: str,
                       out_dir: Path, fmt: str = "dense") -> tuple[dict[str, float], Path]:
    """Save the artifact, reload it, check identical scores, then measure bytes and CPU latency of the reloaded copy."""
    path = out_dir / f"{name}.pt"
    nbytes = save_artifact(model, path, fmt=fmt)
    reloaded = load_artifact(path)
    check_same_scores(model, reloaded, *family.example_inputs(data))
    lat = family.latency(reloaded, data, cfg)
    extra = [b for b in (cfg.bench.get("backends") or ["eager"]) if b != "eager"]
    if extra:  # the same reloaded artifact on other runtimes: <metric>_<backend> (recsys.export.onnx_backend)
        from recsys.export.onnx_backend import backend_metrics

        lat.update(backend_metrics(reloaded, extra, family, data, cfg, out_dir, name))
    return {"artifact_bytes": float(nbytes), **count_params(reloaded), **lat}, path


def prefixed(stage: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{stage}/{k}": v for k, v in metrics.items()}


def results_table(rows: dict[str, dict[str, float]], k: int = 10) -> str:
    """A small markdown table of every stage (headers in the @ form, metric keys stay *_at_*)."""
    cols = [(f"hr_at_{k}", f"HR@{k}", "{:.4f}"), (f"ndcg_at_{k}", f"NDCG@{k}", "{:.4f}"),
            (f"recall_at_{k}", f"recall@{k} (full)", "{:.4f}"), ("auc", "AUC", "{:.4f}"),
            ("logloss", "logloss", "{:.4f}"),
            ("recall_at_20", "recall@20", "{:.4f}"), ("mrr_at_20", "MRR@20", "{:.4f}"),
            ("params_nonzero", "nonzero params", "{:,.0f}"), ("artifact_bytes", "artifact MB", "{:.3f}"),
            ("latency_p50_ms", "p50 ms", "{:.3f}"), ("latency_p99_ms", "p99 ms", "{:.3f}"),
            ("latency_full_p50_ms", "full-catalogue ms", "{:.3f}"), ("throughput_per_s", "pairs/s", "{:,.0f}")]
    cols = [c for c in cols if any(c[0] in m for m in rows.values())]
    lines = ["| stage | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for stage, m in rows.items():
        vals = [(fmt.format(m[key] / 1e6) if key == "artifact_bytes" else fmt.format(m[key])) if key in m else "–"
                for key, _, fmt in cols]
        lines.append(f"| {stage} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


@dataclass
class StageResult:
    """What a stage produced: its model and the figures it measured (merged into the job's table by ``run``)."""

    model: torch.nn.Module
    figures: dict[str, dict[str, float]] = field(default_factory=dict)   # stage name -> metrics, in stage order
    final: str = "dense"                                                   # the stage whose model ships
    ctx: CompressContext | None = None
    techniques: list[Technique] = field(default_factory=list)


def compress_and_finetune(dense: torch.nn.Module, data: Any, cfg: DictConfig, plain: dict[str, Any],
                          family: TaskFamily, trainer: StageTrainer) -> StageResult:
    """Apply the configured techniques, evaluate, fine-tune (masks/quantizers in force), finalize, evaluate."""
    techniques = configured(plain)
    if not techniques:
        return StageResult(dense)
    ctx = CompressContext(cfg=cfg, data=data, family=family, dense=dense, trainer=trainer)
    label = techniques[0].label if len(techniques) == 1 else "compressed"
    model = copy.deepcopy(dense)
    for t in techniques:
        model = t.apply(model, ctx)
    ft = cfg.get("finetune") or {}
    epochs = int(ft.get("epochs", 0) or 0)
    if epochs <= 0:
        for t in techniques:
            model = t.finalize(model, ctx)
        return StageResult(model, {label: trainer.evaluate(model)}, label, ctx, techniques)
    figures = {label: trainer.evaluate(model)}
    cbs = [cb for t in techniques for cb in t.callbacks(ctx)]
    info = trainer.train(model, "finetune", lr=float(ft.get("lr", cfg.train.lr)), epochs=epochs,
                         data_fraction=float(ft.get("data_fraction", 1.0)), callbacks=cbs,
                         select_best=bool(ft.get("select_best", False)))
    for t in techniques:
        model = t.finalize(model, ctx)
    figures["finetuned"] = {**info, **trainer.evaluate(model)}
    return StageResult(model, figures, "finetuned", ctx, techniques)


def objective_values(cfg: DictConfig, logged: dict[str, float]) -> float | tuple[float, ...]:
    """The sweep objective(s) ``cfg.objectives`` from what the job logged (one float, or a tuple for several)."""
    objectives = [str(o) for o in cfg.objectives]
    missing = [o for o in objectives if o not in logged]
    if missing:
        raise ConfigError(f"objectives={missing} are not logged by this job; available: {sorted(logged)}")
    vals = tuple(float(logged[o]) for o in objectives)
    return vals[0] if len(vals) == 1 else vals


# -------------------------------------------------------------------------------------------------------------- main
def validate(cfg: DictConfig) -> dict[str, Any]:
    """Every config check, before any data is read or any model trained (raises one ConfigError listing them all);
    returns the plain resolved config the later stages read."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    checks.validate(plain)
    return plain


def run(cfg: DictConfig) -> float | tuple[float, ...]:
    """Run one job; returns the configured objective metric(s) for Hydra sweepers."""
    plain = validate(cfg)
    family = get_family(cfg.model.task)
    Path(cfg.paths.cache_dir).mkdir(parents=True, exist_ok=True)
    lifecycle.watch_parent()                       # a sweep worker stops when its launcher dies
    lifecycle.remove_dead_ckpts(cfg.paths.cache_dir)   # checkpoint folders of jobs killed -9
    data = family.load_data(cfg)
    data_tags, data_metrics = family.data_summary(data)
    tags = {**data_tags, "model": cfg.model.name, "task": family.name, **hydra_tags()}
    with tracking.start_run(cfg.tracking.uri, cfg.tracking.experiment, run_name(cfg),
                            artifact_location=cfg.tracking.get("artifact_location"), tags=tags) as tr:
        out_dir = job_dir(tr.run_id)
        tr.set_tags({"job_dir": str(out_dir.resolve())})
        tr.log_params(plain)
        tr.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        tr.log_metrics(data_metrics)
        tr.set_tags({"latency_backend": "pytorch-eager",
                     "bench_backends": ",".join(cfg.bench.get("backends") or ["eager"])})
        logger = make_logger(cfg, tr)
        trainer = StageTrainer(family, data, cfg, logger)
        dense, info = dense_model(cfg, data, logger, family)
        dense_row = {**info, **trainer.evaluate(dense)}
        measured, path = export_and_measure(dense, data, cfg, family, "dense", out_dir)
        dense_row.update(measured)
        tr.log_metrics(prefixed("dense", dense_row))
        tr.log_artifact(path, "artifacts")
        dense_path, shipped_path, fmt = path, None, "dense"
        result = compress_and_finetune(dense, data, cfg, plain, family, trainer)
        rows = {"dense": dense_row, **result.figures}
        if result.ctx is not None:
            fmt = artifact_format(result.model, any(t.ships_sparse for t in result.techniques))
            measured, path = export_and_measure(result.model, data, cfg, family, "compressed", out_dir, fmt=fmt)
            final = {**rows[result.final], **measured, **result.ctx.metrics}
            final["compression_ratio"] = dense_row["artifact_bytes"] / final["artifact_bytes"]
            final["speedup_p50"] = dense_row["latency_p50_ms"] / final["latency_p50_ms"]
            if "latency_full_p50_ms" in final:
                final["speedup_full_p50"] = dense_row["latency_full_p50_ms"] / final["latency_full_p50_ms"]
            rows[result.final] = final
            tr.set_tags({"artifact_format": fmt, **result.ctx.params})
            tr.log_artifact(path, "artifacts")
            shipped_path = path
            for stage, m in rows.items():
                if stage != "dense":
                    tr.log_metrics(prefixed(stage, m))
        final = rows[result.final]
        tr.log_metrics(prefixed("final", final))
        if cfg.tracking.get("log_model", True):  # pyfunc models + Model Registry version (recsys.serve)
            from recsys.serve.register import log_job_models

            log_job_models(cfg, family, data, out_dir, dense_path, shipped_path, final, fmt,
                           result.ctx.params if result.ctx is not None else None)
        table = results_table(rows, int(cfg.eval.topk[0]))
        tr.log_artifact(write_text(out_dir / "results.md", with_provenance(table)))
        print("\n" + table + "\n")
        print(f"latency: {int(cfg.bench.threads)} thread(s), eager PyTorch, reloaded artifact; MLflow run {tr.run_id}")
        print(f"MLflow UI:  {tracking.ui_hint(cfg.tracking.uri)}")
        server = tracking.is_server(tracking.normalise_uri(cfg.tracking.uri))
        ui = tracking.normalise_uri(cfg.tracking.uri) if server else "http://127.0.0.1:5000"
        print(f"            runs table: {tracking.experiment_url(ui, tr.run.info.experiment_id)}")
        logged = {**prefixed("final", final), **{k: v for s, m in rows.items() for k, v in prefixed(s, m).items()}}
    return objective_values(cfg, logged)


class JobRunLogger(MLFlowLogger):
    """Lightning's MLFlowLogger that never ends the run: Lightning's logger marks it FINISHED after every fit (so a job
    killed -9 later looked finished) and FAILED on any interrupt; the run's end belongs to ``tracking.start_run``
    (FINISHED / FAILED / KILLED with the reason). Module level, so that DDP's spawned ranks can pickle it."""

    def finalize(self, status: str = "success") -> None:
        return None


def make_logger(cfg: DictConfig, tr: tracking.Tracker) -> Any:
    """Lightning's MLFlowLogger attached to this job's run, so per-epoch curves land beside the stage metrics."""
    return JobRunLogger(experiment_name=cfg.tracking.experiment, tracking_uri=tr.uri, run_id=tr.run_id)
