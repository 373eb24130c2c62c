"""MLflow runs -> markdown / CSV tables and matplotlib plots, written to ``reports/<selection>/`` and logged as MLflow
artifacts. Importable (``load_runs``, ``build``, ``write_report``) and a CLI (``python -m recsys.report --help``).

Every cell is a logged metric (mean ± sample std when several seeds of one setting exist); a metric no selected run
logs is shown as "–", never filled in."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from recsys.fileio import atomic_path, write_csv, write_text
from recsys.provenance import provenance, with_provenance
from recsys.report.load import (
    KIND_TAG,
    STUDY_TAG,
    ReportError,
    Selection,
    fetch_runs,
    load_runs,
    metric_names,
    require_metrics,
    resolve_uri,
    runs_frame,
)
from recsys.report.plots import pareto_mask
from recsys.report.tables import (
    compression_matrix,
    drop_constant_labels,
    metric_columns,
    seed_table,
    to_markdown,
    with_groups,
)

__all__ = ["Report", "ReportError", "Selection", "build", "fetch_runs", "load_runs", "log_report", "metric_names",
           "pareto_mask", "resolve_uri", "runs_frame", "write_report", "main"]


@dataclass
class Report:
    """Tables (DataFrames) and figures built from one set of runs."""

    runs: pd.DataFrame
    seed: pd.DataFrame
    matrix: pd.DataFrame
    quality: str
    figures: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def seed_markdown(self) -> str:
        labels = drop_constant_labels(self.seed, ["dataset", "model", "technique", "setting"]) + ["stage"]
        return to_markdown(self.seed, labels, metric_columns(self.seed))

    def matrix_markdown(self) -> str:
        labels = drop_constant_labels(self.matrix, ["dataset", "model", "technique", "setting"])
        return to_markdown(self.matrix, labels, metric_columns(self.matrix))


def build(runs: pd.DataFrame, quality: str = "hr_at_10", k: int = 10, plots: bool = True) -> Report:
    """Tables and plots for ``runs`` (a ``load_runs`` frame); ``quality`` is the metric name (no stage) plotted."""
    from recsys.report import plots as P

    require_metrics(runs, [f"final/{quality}"], what="quality metric")
    groups = with_groups(runs)
    seed = seed_table(groups, k)
    matrix = compression_matrix(groups, k, quality=[quality])
    rep = Report(runs=groups, seed=seed, matrix=matrix, quality=quality)
    y = f"final/{quality}"
    missing = [c for c in metric_columns(matrix) if matrix[c].isna().all()]
    if missing:
        rep.notes.append("– = not logged by these runs: " + ", ".join(missing))
    if any(matrix["n"] > 1):
        rep.notes.append("a ± b = mean ± sample std over the runs (seeds) of one setting; n = number of runs")
    if plots:
        makers = {
            "quality_vs_sparsity": lambda: P.quality_vs_sparsity(groups, y),
            "quality_vs_bytes": lambda: P.quality_vs(matrix, "final/artifact_bytes", y),
            "quality_vs_latency": lambda: P.quality_vs(matrix, "final/latency_p50_ms", y),
            "latency_by_backend": lambda: P.latency_bars(latency_table(groups, matrix)),
        }
        for name, make in makers.items():
            fig = make()
            if fig is None:
                rep.notes.append(f"{name}: not drawn, no selected run logs what it needs")
            else:
                rep.figures[name] = fig
    return rep


def latency_table(groups: pd.DataFrame, matrix: pd.DataFrame) -> pd.DataFrame:
    """The matrix's groups with every logged ``final/latency_*`` metric aggregated (one column pair per backend)."""
    from recsys.report.tables import GROUP_COLS, aggregate

    keys = sorted(c[len("metrics."):] for c in groups.columns
                  if c.startswith("metrics.final/latency_") and c.endswith("_ms"))
    agg = aggregate(groups, GROUP_COLS, keys)
    order = {tuple(r[c] for c in GROUP_COLS): i for i, r in matrix.iterrows()}
    agg["_o"] = [order.get(tuple(r[c] for c in GROUP_COLS), 0) for _, r in agg.iterrows()]
    return agg.sort_values("_o").drop(columns="_o").reset_index(drop=True)


def write_report(rep: Report, out_dir: str | Path, title: str = "recsys-compress report") -> dict[str, Path]:
    """Write seed_table.{md,csv}, compression_matrix.{md,csv}, runs.csv, one PNG per figure and report.md."""
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    prov = provenance()
    for name, table, md in (("seed_table", rep.seed, rep.seed_markdown()),
                            ("compression_matrix", rep.matrix, rep.matrix_markdown())):
        files[f"{name}.csv"] = out / f"{name}.csv"
        write_csv(files[f"{name}.csv"], table, index=False)
        files[f"{name}.md"] = out / f"{name}.md"
        write_text(files[f"{name}.md"], with_provenance(md, prov))
    cols = ["run_id", "run_name", "dataset", "model", "technique", "setting", "seed", "status"]
    cols += sorted(c for c in rep.runs.columns if c.startswith("metrics.final/"))
    files["runs.csv"] = out / "runs.csv"
    write_csv(files["runs.csv"], rep.runs[[c for c in cols if c in rep.runs]], index=False)
    for name, fig in rep.figures.items():
        files[f"{name}.png"] = out / f"{name}.png"
        with atomic_path(files[f"{name}.png"]) as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
    body = [f"# {title}", "", f"{len(rep.runs)} runs. Quality metric: `final/{rep.quality}`.", "",
            "## Seed table (per stage)", "", rep.seed_markdown(), "",
            "## Compression matrix (final stage: what ships)", "", rep.matrix_markdown(), ""]
    body += [f"_{n}_  " for n in rep.notes] + [""]
    body += [f"![{n}]({n}.png)" for n in rep.figures]
    files["report.md"] = out / "report.md"
    write_text(files["report.md"], with_provenance("\n".join(body), prov))
    return files


def log_report(out_dir: str | Path, sel: Selection, uri: str | None = None) -> str:
    """Log a written report folder as MLflow artifacts (``report/``): on the study's parent run when a study is
    selected, else on one report run per selection (reused when the report is made again). Returns the run id."""
    from mlflow.tracking import MlflowClient

    uri = resolve_uri(uri)
    client = MlflowClient(uri)
    exp_id = None
    if sel.experiment:
        exp = client.get_experiment_by_name(sel.experiment)
        exp_id = exp.experiment_id if exp else None
    if exp_id is None:
        exp_id = client.get_run(sel.run_ids[0]).info.experiment_id
    def _q(v: str) -> str:
        return "'" + v.replace("'", "\\'") + "'"

    run = None
    if sel.study:
        found = client.search_runs([exp_id], f"tags.{STUDY_TAG} = {_q(sel.study)} and tags.`{KIND_TAG}` = 'study'")
        run = found[0] if found else None
    if run is None:
        found = client.search_runs([exp_id], f"tags.`{KIND_TAG}` = 'report' and tags.`recsys.selection` = "
                                             f"{_q(sel.describe())}")
        run = found[0] if found else client.create_run(exp_id, run_name=f"report {sel.describe()}"[:250],
                                                       tags={KIND_TAG: "report", "recsys.selection": sel.describe()})
        client.set_terminated(run.info.run_id)
    client.log_artifacts(run.info.run_id, str(out_dir), "report")
    return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    from recsys.report.cli import main as cli_main

    return cli_main(argv)
