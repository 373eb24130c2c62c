"""``python -m recsys.report --registry <name>``: the Model Registry versions of one registered model (what a sweep
registered), one row each: version, run, run name, stage, serving runtime, compression settings and headline metrics
(the version's tags, set by ``recsys.serve.register``)."""
from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from recsys.report.load import ReportError, resolve_uri

# the settings shown in the table (every setting is a tag of the version: MLflow UI, Models tab)
SHOWN = ("prune.method", "prune.ratio", "prune.schedule", "quant.method", "quant.bits", "distill.method",
         "distill.student.", "distill.alpha", "distill.temperature", "lowrank.method", "lowrank.rank", "finetune.epochs",
         "finetune.lr")
METRICS = ("hr_at_10", "ndcg_at_10", "recall_at_20", "mrr_at_20", "auc", "artifact_bytes", "latency_full_p50_ms")


def registry_rows(name: str, uri: str | None = None) -> list[dict[str, str]]:
    """One dict per version of ``name``, oldest first; ReportError naming what exists when ``name`` is unknown."""
    uri = resolve_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ReportError(f"no MLflow store at {uri}: run a job first (python run.py) or pass --uri")
    client = MlflowClient(uri)
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        known = sorted(m.name for m in client.search_registered_models())
        raise ReportError(f"no registered model named {name!r} in {uri}; registered there: {known or 'none'}")
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version)):
        t = v.tags
        try:
            run_name = client.get_run(v.run_id).info.run_name if v.run_id else ""
        except Exception:  # noqa: BLE001 - a deleted run leaves the version; show it without a name
            run_name = "(run deleted)"
        rows.append({
            "version": str(v.version), "uri": f"models:/{name}/{v.version}", "run_id": v.run_id or "",
            "run_name": run_name or "", "stage": t.get("stage", ""), "runtime": t.get("serve_runtime", ""),
            "settings": " ".join(f"{k}={t[k]}" for k in sorted(t) if k.startswith(SHOWN)),
            **{m: t.get(f"final/{m}", "") for m in METRICS}})
    return rows


def registry_markdown(name: str, rows: list[dict[str, str]]) -> str:
    """The rows as a markdown table (metric columns only where some version has the metric)."""
    metrics = [m for m in METRICS if any(r[m] for r in rows)]
    head = ["version", "run", "run name", "stage", "runtime", "settings", *metrics]
    lines = [f"Model Registry: {name} ({len(rows)} versions)", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["version"], r["run_id"][:12], r["run_name"], r["stage"], r["runtime"], r["settings"] or "-",
                 *[r[m] for m in metrics]]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)
