"""Read runs back from MLflow into one flat DataFrame: a row per run, columns ``metrics.<key>``, ``params.<key>``,
``tags.<key>``. Selection by experiment, Hydra sweep, Optuna study, tags or run ids; bookkeeping runs (study parents,
report runs) are left out so that every table row is a pipeline job."""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from recsys.errors import ConfigError

#: tag that marks bookkeeping runs (not pipeline jobs): "study" (an Optuna study's parent run) or "report"
KIND_TAG = "recsys.kind"
STUDY_TAG = "optuna_study"
DEFAULT_URI = "sqlite:///mlruns/mlflow.db"


class ReportError(ConfigError):
    """Nothing to report, or a selection / metric that does not exist; the message says what exists instead."""


@dataclass
class Selection:
    """Which runs a report covers. Empty fields select nothing extra; all given ones must hold."""

    experiment: str | None = None
    sweep: str | None = None            # Hydra sweep dir (tag sweep_dir), its last part, or the sweep_id tag
    study: str | None = None            # Optuna study name (tag optuna_study, set by recsys.sweep)
    tags: dict[str, str] = field(default_factory=dict)
    run_ids: list[str] = field(default_factory=list)
    include_failed: bool = False

    def describe(self) -> str:
        parts = [f"experiment={self.experiment}"] if self.experiment else []
        parts += [f"sweep={self.sweep}"] if self.sweep else []
        parts += [f"study={self.study}"] if self.study else []
        parts += [f"{k}={v}" for k, v in sorted(self.tags.items())]
        parts += [f"runs={','.join(r[:8] for r in self.run_ids)}"] if self.run_ids else []
        return " ".join(parts) or "all runs"

    def slug(self) -> str:
        raw = self.study or (Path(self.sweep).name if self.sweep else None) or self.experiment or "runs"
        extra = "-".join(f"{k}-{v}" for k, v in sorted(self.tags.items()))
        raw = f"{raw}-{extra}" if extra else raw
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw) or "runs"


def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI: given, else $RECSYS_TRACKING_URI (scripts/stack.sh env), else $MLFLOW_TRACKING_URI, else the
    project's default sqlite store (made absolute)."""
    from recsys.tracking import normalise_uri

    return normalise_uri(uri or os.environ.get("RECSYS_TRACKING_URI") or os.environ.get("MLFLOW_TRACKING_URI")
                         or DEFAULT_URI)


def _quote(v: str) -> str:
    return "'" + str(v).replace("'", "\\'") + "'"


def _search(client: MlflowClient, exp_ids: list[str], filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(exp_ids, filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def fetch_runs(sel: Selection, uri: str | None = None) -> list[Run]:
    """The MLflow runs a selection names, oldest first; raises ReportError with what exists when it names nothing."""
    uri = resolve_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ReportError(f"no MLflow store at {uri}: run a job first (python run.py) or pass --uri")
    client = MlflowClient(uri)
    if sel.run_ids and not sel.experiment:
        runs = []
        for rid in sel.run_ids:
            try:
                runs.append(client.get_run(rid))
            except Exception as e:  # noqa: BLE001 - MlflowException for an unknown id
                raise ReportError(f"run id {rid!r} not found in {uri}: {e}") from None
        exp_ids = sorted({r.info.experiment_id for r in runs})
    else:
        if not sel.experiment:
            raise ReportError("name an experiment (--experiment) or run ids (--run-id)")
        exp = client.get_experiment_by_name(sel.experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise ReportError(f"experiment {sel.experiment!r} not found in {uri}; experiments there: {names}")
        exp_ids = [exp.experiment_id]
        runs = []
    clauses = []
    if sel.study:
        clauses.append(f"tags.{STUDY_TAG} = {_quote(sel.study)}")
    for k, v in sel.tags.items():
        key = f"tags.`{k}`" if not k.replace("_", "").isalnum() else f"tags.{k}"
        clauses.append(f"{key} = {_quote(v)}")
    if not runs:
        runs = _search(client, exp_ids, " and ".join(clauses))
    else:
        runs = [r for r in runs if all(r.data.tags.get(k) == v for k, v in sel.tags.items())
                and (not sel.study or r.data.tags.get(STUDY_TAG) == sel.study)]
    if sel.sweep:
        s = sel.sweep.rstrip("/")
        runs = [r for r in runs if s in (r.data.tags.get("sweep_dir", "").rstrip("/"),
                                         Path(r.data.tags.get("sweep_dir", "")).name, r.data.tags.get("sweep_id"))]
    if sel.run_ids:
        wanted = set(sel.run_ids)
        runs = [r for r in runs if r.info.run_id in wanted]
    runs = [r for r in runs if r.data.tags.get(KIND_TAG) not in ("study", "report")]
    if not sel.include_failed:
        runs = [r for r in runs if r.info.status == "FINISHED"]
    if not runs:
        raise ReportError(f"no finished pipeline runs match {sel.describe()} in {uri}")
    return sorted(runs, key=lambda r: r.info.start_time or 0)


def runs_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """One row per run: run_id, run_name, status, start_time, then metrics.*, params.*, tags.* columns (raw values)."""
    rows = []
    for r in runs:
        row: dict[str, object] = {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
                                  "start_time": r.info.start_time, "experiment_id": r.info.experiment_id}
        row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
        row.update({f"params.{k}": v for k, v in r.data.params.items()})
        row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def load_runs(experiment: str | None = None, uri: str | None = None, *, sweep: str | None = None,
              study: str | None = None, tags: Mapping[str, str] | None = None, run_ids: Iterable[str] = (),
              include_failed: bool = False) -> pd.DataFrame:
    """Selected runs as a DataFrame (see ``runs_frame``)."""
    sel = Selection(experiment=experiment, sweep=sweep, study=study, tags=dict(tags or {}), run_ids=list(run_ids),
                    include_failed=include_failed)
    return runs_frame(fetch_runs(sel, uri))


def metric_names(df: pd.DataFrame, stage: str | None = None) -> list[str]:
    """Metric keys logged by at least one run (optionally of one stage), without the ``metrics.`` prefix."""
    keys = [c[len("metrics."):] for c in df.columns if c.startswith("metrics.") and df[c].notna().any()]
    return sorted(k for k in keys if stage is None or k.startswith(stage + "/"))


def require_metrics(df: pd.DataFrame, keys: Iterable[str], what: str = "metric") -> None:
    """Raise ReportError naming each metric no selected run logs, with the closest ones that exist."""
    import difflib

    have = metric_names(df)
    missing = [k for k in keys if k not in have]
    if missing:
        hints = {k: difflib.get_close_matches(k, have, n=3, cutoff=0.5) for k in missing}
        raise ReportError(f"{what} {missing} not logged by any selected run; closest: {hints}; "
                          f"logged: {have}")
