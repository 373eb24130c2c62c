"""The stages of one Hydra job, in order: data -> dense model (trained or cached) -> [compress -> fine-tune] ->
evaluate every stage -> export + measure the reloaded artifact -> track. Returns the sweep objective(s)."""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from recsys import checks, tracking
from recsys.data.datamodule import RankingDataModule
from recsys.data.splits import ImplicitSplit, build_split
from recsys.evaluation.protocols import full_ranks, ranking_metrics, sampled_ranks
from recsys.export.artifact import artifact_meta, check_same_scores, load_artifact, save_artifact
from recsys.measure.latency import LatencyConfig, measure_latency
from recsys.measure.size import count_params
from recsys.models import build_model
from recsys.tasks.fit import fit
from recsys.tasks.ranking import RankingTask

MODEL_META_KEYS = ("name",)


# ----------------------------------------------------------------------------------------------------------- helpers
def model_spec(model_cfg: dict[str, Any], split: ImplicitSplit) -> dict[str, Any]:
    """Constructor spec of the configured model: its ``_target_`` and init kwargs, with dataset sizes filled in."""
    spec = {k: v for k, v in model_cfg.items() if k not in MODEL_META_KEYS and not k.startswith("pretrain")}
    spec.update(n_users=split.n_users, n_items=split.n_items)
    return spec


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def output_dir() -> Path:
    """Hydra's job output dir when run through Hydra, else a temporary dir (compose API, notebooks)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - HydraConfig raises ValueError when not initialised
        return Path(tempfile.mkdtemp(prefix="recsys-job-"))


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

        over = HydraConfig.get().job.override_dirname
        return f"{base} {over}" if over else base
    except Exception:  # noqa: BLE001
        return base


# ------------------------------------------------------------------------------------------------------------ stages
def train_model(model: torch.nn.Module, split: ImplicitSplit, cfg: DictConfig, stage: str, logger: Any,
                lr: float | None = None, optimizer: str | None = None, epochs: int | None = None,
                data_fraction: float = 1.0, callbacks: tuple = ()) -> dict[str, float]:
    """Train ``model`` in place with the ranking task; keeps the best validation epoch."""
    t = cfg.train
    task = RankingTask(model, lr=lr or t.lr, optimizer=optimizer or t.optimizer, weight_decay=t.weight_decay,
                       stage=stage, topk=int(cfg.eval.topk[0]))
    dm = RankingDataModule(split, batch_size=t.batch_size, num_negatives=t.num_negatives, seed=cfg.seed,
                           eval_batch_users=cfg.eval.batch_users, data_fraction=data_fraction)
    ckpt = tempfile.mkdtemp(prefix=f"ckpt-{stage}-", dir=str(Path(cfg.paths.cache_dir).resolve()))
    info = fit(task, dm, epochs or t.epochs, OmegaConf.to_container(cfg.trainer, resolve=True), logger=logger,
               callbacks=callbacks, ckpt_dir=ckpt, monitor=f"{stage}/val_hr_at_{int(cfg.eval.topk[0])}")
    n_samples = len(split.train_users) * data_fraction * (1 + t.num_negatives) * info["epochs_run"]
    info["samples_per_s"] = n_samples / max(info["train_seconds"], 1e-9)
    return info


def dense_model(cfg: DictConfig, split: ImplicitSplit, logger: Any) -> tuple[torch.nn.Module, dict[str, float]]:
    """The trained dense model: from the cache keyed by (data, model, train, seed), else trained (once, under a lock)."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    train_cfg = OmegaConf.to_container(cfg.train, resolve=True)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    key = cache_key("dense", data_cfg, split.checksum, model_cfg, train_cfg, cfg.seed)
    path = Path(cfg.paths.cache_dir) / "dense" / f"{cfg.model.name}-{cfg.data.name}-{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=6 * 3600):
        if path.exists() and cfg.train.get("use_cache", True):
            info = dict(artifact_meta(path)["train_info"])
            info["cache_hit"] = 1.0
            print(f"[dense] loaded from cache: {path}")
            return load_artifact(path), info
        L.seed_everything(cfg.seed, workers=True)
        model = build_model(model_spec(model_cfg, split))
        info: dict[str, float] = {}
        if model_cfg.get("pretrain"):
            info.update(pretrain_neumf(model, cfg, split, logger))
            opt, lr = model_cfg.get("pretrain_optimizer", "sgd"), model_cfg.get("pretrain_lr", cfg.train.lr)
            info.update(train_model(model, split, cfg, "dense", logger, lr=lr, optimizer=opt))
        else:
            info.update(train_model(model, split, cfg, "dense", logger))
        info["cache_hit"] = 0.0
        save_artifact(model, path, meta={"train_info": info, "key": key})
        return model, info


def pretrain_neumf(model: torch.nn.Module, cfg: DictConfig, split: ImplicitSplit, logger: Any) -> dict[str, float]:
    """Train GMF and MLP with the same settings (each cached), then initialise NeuMF from them (He et al., Sec. 3.4.1)."""
    seconds = 0.0
    parts = {}
    for name, target, kw in (("gmf", "recsys.models.ncf.GMF", {"factors": cfg.model.factors}),
                             ("mlp", "recsys.models.ncf.MLP", {"layers": list(cfg.model.mlp_layers),
                                                              "dropout": cfg.model.dropout})):
        sub = OmegaConf.merge(cfg, {"model": {"_target_": target, "name": name, **kw}})
        sub.model = OmegaConf.create({"_target_": target, "name": name, **kw})
        m, info = dense_model(sub, split, logger=False)
        seconds += info.get("train_seconds", 0.0)
        parts[name] = m
        print(f"[pretrain] {name}: trained/cached (train_seconds={info.get('train_seconds', 0):.1f})")
    model.load_pretrained(parts["gmf"], parts["mlp"], alpha=float(cfg.model.get("pretrain_alpha", 0.5)))
    return {"pretrain_seconds": seconds}


def evaluate(model: torch.nn.Module, split: ImplicitSplit, cfg: DictConfig) -> dict[str, float]:
    """Sampled-protocol HR/NDCG on test and validation, full-ranking recall/NDCG on test (known positives masked)."""
    model.eval()
    ks = tuple(int(k) for k in cfg.eval.topk)
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    ranks = sampled_ranks(model, split.test_users, split.test_candidates(), batch_users=cfg.eval.batch_users)
    out.update(ranking_metrics(ranks, ks))
    out["eval_seconds"] = time.perf_counter() - t0
    ranks = sampled_ranks(model, split.val_users, split.val_candidates(), batch_users=cfg.eval.batch_users)
    out.update({f"val_{k}": v for k, v in ranking_metrics(ranks, ks).items() if not k.startswith("mrr")})
    if cfg.eval.full_ranking:
        t0 = time.perf_counter()
        indptr, indices = split.known_csr()
        ranks = full_ranks(model, split.test_users, split.test_items, split.n_items, indptr, indices,
                           batch_users=cfg.eval.batch_users)
        out["full_eval_seconds"] = time.perf_counter() - t0
        for k in ks:
            full = ranking_metrics(ranks, (k,))
            out[f"recall_at_{k}"] = full[f"hr_at_{k}"]
            out[f"full_ndcg_at_{k}"] = full[f"ndcg_at_{k}"]
    return out


def export_and_measure(model: torch.nn.Module, split: ImplicitSplit, cfg: DictConfig, name: str, out_dir: Path,
                       fmt: str = "dense") -> tuple[dict[str, float], Path]:
    """Save the artifact, reload it, check identical scores, then measure bytes and CPU latency of the reloaded copy."""
    path = out_dir / f"{name}.pt"
    nbytes = save_artifact(model, path, fmt=fmt)
    reloaded = load_artifact(path)
    g = torch.Generator().manual_seed(0)
    u = torch.randint(0, split.n_users, (4096,), generator=g)
    i = torch.randint(0, split.n_items, (4096,), generator=g)
    check_same_scores(model, reloaded, u, i)
    b = cfg.bench
    lat = measure_latency(reloaded, split.n_users, split.n_items,
                          LatencyConfig(threads=b.threads, warmup=b.warmup, requests=b.requests, candidates=b.candidates,
                                        full_catalogue_requests=b.full_catalogue_requests,
                                        throughput_batch=b.throughput_batch, throughput_repeats=b.throughput_repeats))
    return {"artifact_bytes": float(nbytes), **count_params(reloaded), **lat}, path


def prefixed(stage: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{stage}/{k}": v for k, v in metrics.items()}


def results_table(rows: dict[str, dict[str, float]], k: int = 10) -> str:
    """A small markdown table of every stage (headers in the @ form, metric keys stay *_at_*)."""
    cols = [(f"hr_at_{k}", f"HR@{k}", "{:.4f}"), (f"ndcg_at_{k}", f"NDCG@{k}", "{:.4f}"),
            (f"recall_at_{k}", f"recall@{k} (full)", "{:.4f}"), ("params_total", "params", "{:,.0f}"),
            ("artifact_bytes", "artifact MB", "{:.3f}"), ("latency_p50_ms", "p50 ms (1x100)", "{:.3f}"),
            ("latency_p99_ms", "p99 ms", "{:.3f}"), ("latency_full_p50_ms", "full-catalogue ms", "{:.3f}"),
            ("throughput_per_s", "pairs/s", "{:,.0f}")]
    lines = ["| stage | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for stage, m in rows.items():
        vals = [(fmt.format(m[key] / 1e6) if key == "artifact_bytes" else fmt.format(m[key])) if key in m else "–"
                for key, _, fmt in cols]
        lines.append(f"| {stage} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------------- main
def run(cfg: DictConfig) -> float | tuple[float, ...]:
    """Run one job; returns the configured objective metric(s) for Hydra sweepers."""
    checks.validate(OmegaConf.to_container(cfg, resolve=True))
    Path(cfg.paths.cache_dir).mkdir(parents=True, exist_ok=True)
    split = build_split(OmegaConf.to_container(cfg.data, resolve=True), data_dir=cfg.paths.data_dir,
                        cache_dir=cfg.paths.cache_dir, seed=cfg.seed)
    out_dir = output_dir()
    tags = {"dataset": split.name, "dataset_checksum": split.checksum, "model": cfg.model.name, **hydra_tags()}
    with tracking.start_run(cfg.tracking.uri, cfg.tracking.experiment, run_name(cfg),
                            artifact_location=cfg.tracking.get("artifact_location"), tags=tags) as tr:
        tr.log_params(OmegaConf.to_container(cfg, resolve=True))
        tr.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        tr.log_metrics({"data/n_users": split.n_users, "data/n_items": split.n_items,
                        "data/n_train": len(split.train_users), "data/n_test": len(split.test_users)})
        logger = make_logger(cfg, tr)
        model, info = dense_model(cfg, split, logger)
        rows: dict[str, dict[str, float]] = {}
        dense = {**info, **evaluate(model, split, cfg)}
        measured, path = export_and_measure(model, split, cfg, "dense", out_dir)
        dense.update(measured)
        tr.log_metrics(prefixed("dense", dense))
        tr.log_artifact(path, "artifacts")
        rows["dense"] = dense
        final = rows[list(rows)[-1]]
        tr.log_metrics(prefixed("final", final))
        table = results_table(rows, int(cfg.eval.topk[0]))
        tr.log_text(table + "\n", "results.md")
        print("\n" + table + "\n")
        print(f"latency: {int(cfg.bench.threads)} thread(s), eager PyTorch, reloaded artifact; MLflow run {tr.run_id}")
        print(f"MLflow UI:  mlflow ui --backend-store-uri {tracking.normalise_uri(cfg.tracking.uri)}")
        logged = {**prefixed("final", final), **{k: v for s, m in rows.items() for k, v in prefixed(s, m).items()}}
    objectives = [str(o) for o in cfg.objectives]
    missing = [o for o in objectives if o not in logged]
    if missing:
        raise checks.ConfigError(f"objectives={missing} are not logged by this job; available: {sorted(logged)}")
    vals = tuple(float(logged[o]) for o in objectives)
    return vals[0] if len(vals) == 1 else vals


def make_logger(cfg: DictConfig, tr: tracking.Tracker) -> Any:
    """Lightning's MLFlowLogger attached to this job's run, so per-epoch curves land beside the stage metrics."""
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(experiment_name=cfg.tracking.experiment, tracking_uri=tr.uri, run_id=tr.run_id)


