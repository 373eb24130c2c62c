"""MLflow in one place: the store, run names, params, tags, metrics and artifacts of a pipeline job.

The default store is a sqlite file under ``mlruns/`` (MLflow 3 rejects a plain file store). Several Hydra jobs may start
at once on a fresh store and race on sqlite's schema migration, so the store and the experiment are created under a
file lock before any run starts. With an MLflow tracking server (``http://...``, e.g. ``scripts/stack.sh``) the server
owns the artifact store: the experiment gets the server's default location and artifacts go up through HTTP.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

MAX_PARAM_LEN = 6000
MAX_RUN_NAME_LEN = 250  # runs.name is VARCHAR(250) in MLflow's schema; PostgreSQL enforces it (sqlite does not)
# MLflow 3's UI reads this experiment tag to pick its layout; "custom_model_development" opens the runs table
# (without it an experiment opens on the GenAI overview: traces, empty). Values from mlflow's UI bundle.
EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
# keys that never go into a run name: the base name has model/data; paths and tracking say where, not what
NAME_SKIP_KEYS = ("model", "data", "experiment", "hparams_search", "trainer.enable_progress_bar")
NAME_SKIP_PREFIXES = ("paths.", "tracking.", "hydra.")


def normalise_uri(uri: str) -> str:
    """Make a relative ``sqlite:///path`` absolute so that every job (and the UI command) points at the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def is_server(uri: str) -> bool:
    """True for an MLflow tracking server URI (the server stores runs and artifacts; no local paths apply)."""
    return uri.startswith(("http://", "https://"))


def ui_hint(uri: str) -> str:
    """How a person looks at the runs: the server's address, or the ``mlflow ui`` command for a local store."""
    uri = normalise_uri(uri)
    return uri if is_server(uri) else f"mlflow ui --backend-store-uri {uri}"


def init_store(uri: str, experiment: str, artifact_location: str | None = None) -> str:
    """Create the store (schema) and the experiment once, safely across processes; returns the experiment id."""
    uri = normalise_uri(uri)
    lock_path = None
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        lock_path = str(db) + ".lock"
    lock = FileLock(lock_path) if lock_path else None
    if lock:
        lock.acquire(timeout=600)
    try:
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            if EXPERIMENT_KIND_TAG not in exp.tags:  # stores made before the tag existed open on the runs too
                client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
            return exp.experiment_id
        if is_server(uri):
            artifact_location = None  # the server's own (proxied) artifact store, reachable from every worker
        elif artifact_location:
            Path(artifact_location).mkdir(parents=True, exist_ok=True)
            artifact_location = Path(artifact_location).resolve().as_uri()
        try:
            return client.create_experiment(experiment, artifact_location=artifact_location,
                                            tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
        except MlflowException:
            # another worker on a shared server created it between our lookup and our create (no file lock there)
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise
            return exp.experiment_id
    finally:
        if lock:
            lock.release()


def experiment_url(ui: str, experiment_id: str) -> str:
    """Link to an experiment that opens on its runs table: MLflow 3.17's UI chooses GenAI (traces overview) or model
    training (runs) from its ``workflowType`` switch, default GenAI; the experiment tag alone does not override it."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def short_number(v: Any, digits: int = 3) -> str:
    """A sampled hyper-parameter for people: floats to ``digits`` significant digits (``2.9375e-05`` -> ``2.94e-05``,
    ``0.0071144760093434225`` -> ``0.00711``); integers, booleans and words unchanged. Run names, report tables and
    plot labels all print values through this. A value that rounding would not change is printed as given (``0.0``)."""
    s = str(v)
    if isinstance(v, bool) or s.strip().lstrip("+-").isdigit():
        return s
    try:
        f = float(s)
    except ValueError:
        return s
    short = f"{f:.{digits}g}"
    return s if float(short) == f else short


def readable_run_name(base: str, overrides: list[str]) -> str:
    """``<model>-<data>`` plus only the swept/overridden keys, numbers rounded: ``neumf-ml-100k prune.ratio=0.233``."""
    parts = []
    for o in overrides:
        key, sep, value = o.partition("=")
        key = key.lstrip("+~")
        if not sep or key in NAME_SKIP_KEYS or key.startswith(NAME_SKIP_PREFIXES):
            continue
        parts.append(f"{key}={short_number(value)}")
    return " ".join([base, *parts])


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as their string form."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def git_commit() -> str:
    """``<sha>`` or ``<sha>-dirty`` of the running code (``recsys.provenance``)."""
    from recsys.provenance import commit_label
    from recsys.provenance import git_commit as _commit

    sha, dirty = _commit()
    return commit_label({"commit": sha, "dirty": dirty})


class Tracker:
    """A thin handle on one active MLflow run."""

    def __init__(self, run: mlflow.ActiveRun, uri: str) -> None:
        self.run = run
        self.run_id = run.info.run_id
        self.uri = uri
        self.client = MlflowClient(uri)

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = {k: (str(v)[:MAX_PARAM_LEN] if v is not None else "None") for k, v in flatten(params).items()}
        items = list(flat.items())
        for s in range(0, len(items), 100):
            mlflow.log_params(dict(items[s:s + 100]))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        if clean:
            mlflow.log_metrics(clean, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_text(self, text: str, name: str) -> None:
        mlflow.log_text(text, name)


def reap_dead_runs(uri: str) -> list[str]:
    """Mark FAILED, with a note, the runs of this store left RUNNING by a process of this host that no longer exists
    (kill -9, OOM killer, power loss); returns their ids. Runs of live processes and of other hosts are left alone."""
    from recsys import lifecycle

    client = MlflowClient(uri)
    host = lifecycle.hostname().replace("'", "")
    reaped = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
                                      f"tags.`process.host` = '{host}'", max_results=1000):
            t = run.data.tags
            if not lifecycle.is_dead(t.get("process.host"), t.get("process.pid"), t.get("process.start")):
                continue
            note = (f"reaped: the process that ran this job (host {t.get('process.host')}, pid {t.get('process.pid')})"
                    " died without ending the run (kill -9, out of memory, power loss); marked FAILED by a later job")
            try:
                client.set_tag(run.info.run_id, "failure", note)
                client.set_tag(run.info.run_id, "mlflow.note.content", note)
                client.set_terminated(run.info.run_id, "FAILED")
            except MlflowException:
                # several jobs starting at once (distributed sweep workers) may reap the same run: the tracking
                # server's tag insert is not atomic, so the second insert of "failure" fails on PostgreSQL's unique
                # key. The run reaped by the other job is done; any other failure is raised.
                if "failure" not in client.get_run(run.info.run_id).data.tags:
                    raise
                continue
            print(f"[tracking] run {run.info.run_id} ({run.info.run_name}) was left RUNNING by a dead process: "
                  "marked FAILED")
            reaped.append(run.info.run_id)
    return reaped


@contextmanager
def start_run(uri: str, experiment: str, run_name: str, artifact_location: str | None = None,
              tags: Mapping[str, Any] | None = None) -> Iterator[Tracker]:
    """Open one MLflow run for the job; it ends FINISHED, FAILED with the error kept in the ``failure`` tag and note, or
    KILLED with the signal named (SIGTERM / SIGINT); what was logged stays. Runs of dead processes are reaped first."""
    from recsys import lifecycle

    uri = normalise_uri(uri)
    exp_id = init_store(uri, experiment, artifact_location)
    mlflow.set_tracking_uri(uri)
    reap_dead_runs(uri)
    from recsys.provenance import provenance_tags

    base_tags = {**provenance_tags(), "host_threads": os.cpu_count(), **lifecycle.identity()}
    if len(run_name) > MAX_RUN_NAME_LEN:  # the whole name stays readable in a tag (tags hold up to 8000 characters)
        base_tags["full_run_name"] = run_name
        run_name = run_name[:MAX_RUN_NAME_LEN - 3] + "..."
    base_tags.update(tags or {})
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name,
                          tags={k: str(v) for k, v in base_tags.items()}) as run:
        tracker = Tracker(run, uri)
        try:
            yield tracker
        except lifecycle.JobInterrupted as e:
            note = f"killed by {e.signame} (signal {e.signum}); the process exits with status {e.exit_code}"
            _end_with_note(tracker, "KILLED", {"killed_by_signal": e.signame}, note)
            raise
        except BaseException as e:  # noqa: BLE001 - recorded, then re-raised unchanged
            _end_with_note(tracker, "FAILED", {}, f"{type(e).__name__}: {e}"[:4000])
            raise


def _end_with_note(tracker: Tracker, status: str, tags: Mapping[str, str], note: str) -> None:
    """End the active run with ``status``, its reason in the ``failure`` tag and the run's note (shown in the UI)."""
    try:
        tracker.client.set_tag(tracker.run_id, "failure", note)
        tracker.client.set_tag(tracker.run_id, "mlflow.note.content", note)
        for k, v in tags.items():
            tracker.client.set_tag(tracker.run_id, k, v)
    finally:
        mlflow.end_run(status)
