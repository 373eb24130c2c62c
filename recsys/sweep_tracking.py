"""The MLflow side of an Optuna study (recsys.sweep): one parent run per study, shared by every worker through the
study's user attr ``mlflow_parent_run_id``; trial runs tagged and nested under it; the Pareto front on the parent."""
from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from recsys.fileio import atomic_path, write_csv, write_text
from recsys.provenance import with_provenance
from recsys.tracking import short_number

STUDY_TAG = "optuna_study"
KIND_TAG = "recsys.kind"
PARENT_ATTR = "mlflow_parent_run_id"


def redact(url: str | None) -> str:
    """A storage URL without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", str(url))


def fmt_value(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def trial_values_table(study: optuna.Study, names: Sequence[str], front: Sequence[optuna.trial.FrozenTrial]):
    """The Pareto front as a DataFrame: trial, MLflow run, params, objective values (as returned = as logged)."""
    import pandas as pd

    rows = []
    for t in sorted(front, key=lambda t: t.number):
        row: dict[str, Any] = {"trial": t.number, "mlflow_run_id": t.user_attrs.get("mlflow_run_id", "")}
        row.update({f"params.{k}": v for k, v in t.params.items()})
        row.update(dict(zip(names, t.values)))
        rows.append(row)
    return pd.DataFrame(rows)


class StudyTracker:
    """The MLflow side of a study: a parent run, tags on trial runs, the Pareto front artifacts."""

    def __init__(self, cfg: DictConfig, study_name: str) -> None:
        from mlflow.tracking import MlflowClient

        from recsys.tracking import init_store, normalise_uri

        self.uri = normalise_uri(str(cfg.tracking.uri))
        self.exp_id = init_store(self.uri, str(cfg.tracking.experiment),
                                 OmegaConf.select(cfg, "tracking.artifact_location"))
        self.client = MlflowClient(self.uri)
        self.study_name = study_name
        self.parent_id = ""

    def _create_parent(self) -> str:
        from recsys.lifecycle import identity

        run = self.client.create_run(self.exp_id, run_name=f"study {self.study_name}",
                                     tags={STUDY_TAG: self.study_name, KIND_TAG: "study", **identity()})
        return run.info.run_id

    def attach(self, study: optuna.Study, created: bool, wait_s: float = 120.0) -> str:
        """The study's one parent run, shared by every worker: its id lives in the study's user attrs. The worker that
        created the study creates the run; the others wait for the attr. A study made before the attr existed (it
        already has trials) finds its run by tags, as before."""
        rid = study.user_attrs.get(PARENT_ATTR)
        if rid is None and created:
            rid = self._create_parent()
            study.set_user_attr(PARENT_ATTR, rid)
        deadline = time.time() + wait_s
        while rid is None and not study.get_trials(deepcopy=False) and time.time() < deadline:
            time.sleep(0.5)  # the creating worker is between create_study and set_user_attr
            rid = study.user_attrs.get(PARENT_ATTR)
        if rid is None:
            q = self.study_name.replace("'", "\\'")
            found = self.client.search_runs([self.exp_id], f"tags.{STUDY_TAG} = '{q}' and tags.`{KIND_TAG}` = 'study'",
                                            order_by=["attributes.start_time ASC"])
            rid = found[0].info.run_id if found else self._create_parent()
            study.set_user_attr(PARENT_ATTR, rid)
        self.parent_id = rid
        if self.client.get_run(rid).info.status != "RUNNING":
            self.client.update_run(rid, status="RUNNING")
        from recsys.lifecycle import identity

        for k, v in identity().items():   # this launcher now owns it: reaped if it dies (tracking.reap_dead_runs)
            self.client.set_tag(rid, k, v)
        return rid

    def logged_metric_names(self) -> set[str]:
        """Metric keys logged by the experiment's recent pipeline runs (empty for a fresh store)."""
        runs = self.client.search_runs([self.exp_id], max_results=50, order_by=["attributes.start_time DESC"])
        return {k for r in runs if r.data.tags.get(KIND_TAG) is None for k in r.data.metrics}

    def tag_trial(self, sweep_dir: str, job_num: int, trial: optuna.trial.FrozenTrial | optuna.Trial) -> str | None:
        """Find the run the job logged (tags sweep_dir + job_num), tag it with the study and nest it under the parent."""
        q = sweep_dir.replace("'", "\\'")
        runs = self.client.search_runs([self.exp_id], f"tags.sweep_dir = '{q}' and tags.job_num = '{job_num}'")
        if not runs:
            return None
        rid = runs[0].info.run_id
        tags = {STUDY_TAG: self.study_name, "optuna_trial": trial.number, "mlflow.parentRunId": self.parent_id}
        for k, v in tags.items():
            self.client.set_tag(rid, k, str(v))
        return rid

    def log_study(self, study: optuna.Study, names: Sequence[str], directions: Sequence[str], out_dir: Path,
                  space: dict[str, str], storage: str | None) -> None:
        """Pareto front table + plot and study counts on the parent run."""
        import matplotlib.pyplot as plt

        from recsys.report.plots import study_front

        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not self.client.get_run(self.parent_id).data.params:  # params are write-once: the first invocation's
            for k, v in {"objectives": ",".join(names), "directions": ",".join(directions), "storage": redact(storage),
                         **{f"space.{k}": v for k, v in space.items()}}.items():
                self.client.log_param(self.parent_id, k, str(v)[:6000])
        counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
        for k, v in counts.items():
            self.client.log_metric(self.parent_id, f"study/n_{k}", v)
        if done:
            front = study.best_trials
            table = trial_values_table(study, names, front)
            out_dir.mkdir(parents=True, exist_ok=True)
            write_csv(out_dir / "pareto_front.csv", table, index=False)
            md = [f"# Study {self.study_name}: Pareto front ({len(front)} of {len(done)} complete trials)", "",
                  "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
            md += ["| " + " | ".join((short_number(v) if c.startswith("params.") else fmt_value(v))
                                     if isinstance(v, float) else str(v) for c, v in zip(table.columns, row)) + " |"
                   for row in table.itertuples(index=False)]
            write_text(out_dir / "pareto_front.md", with_provenance("\n".join(md)))
            fig = study_front([t.values for t in done], directions, names, [t.number for t in done],
                              params=[t.params for t in done],
                              title=f"study {self.study_name}: {len(front)} Pareto-optimal of {len(done)} trials")
            with atomic_path(out_dir / "pareto_front.png") as tmp:
                fig.savefig(tmp, dpi=110)
            plt.close(fig)
            self.client.log_metric(self.parent_id, "study/n_pareto", len(front))
            self.client.log_artifacts(self.parent_id, str(out_dir), "pareto")
        self.client.set_terminated(self.parent_id, "FINISHED")
