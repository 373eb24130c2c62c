"""``python -m recsys.report``: tables + plots for an experiment, a Hydra sweep, an Optuna study, tags or run ids."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recsys.report.load import ReportError, Selection


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m recsys.report", description=__doc__)
    p.add_argument("--experiment", "-e", help="MLflow experiment name (tracking.experiment; default recsys-compress)")
    p.add_argument("--uri", help="tracking URI (default: $RECSYS_TRACKING_URI, $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")
    p.add_argument("--sweep", help="a Hydra sweep: its dir (multirun/...), last part, or sweep_id tag")
    p.add_argument("--study", help="an Optuna study name (runs tagged optuna_study by hparams_search sweeps)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="only runs with this tag (repeat)")
    p.add_argument("--run-id", action="append", default=[], help="only these runs (repeat)")
    p.add_argument("--quality", default="hr_at_10", help="quality metric name without stage (default hr_at_10)")
    p.add_argument("--k", type=int, default=10, help="the k of the @k metrics in the tables (default 10)")
    p.add_argument("--out", default="reports", help="parent folder; files go to <out>/<selection>/ (default reports)")
    p.add_argument("--include-failed", action="store_true", help="also rows for FAILED / RUNNING runs")
    p.add_argument("--no-log", action="store_true", help="do not log the files to MLflow")
    p.add_argument("--registry", metavar="NAME", help="list the Model Registry versions of NAME (e.g. neumf-ml-100k): "
                   "run, stage, runtime, compression settings, headline metrics; nothing else is done")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from recsys.report import build, load_runs, log_report, write_report

    a = parse_args(argv)
    if a.registry:
        from recsys.report.registry import registry_markdown, registry_rows

        try:
            print(registry_markdown(a.registry, registry_rows(a.registry, a.uri)))
        except ReportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    tags = {}
    for t in a.tag:
        if "=" not in t:
            print(f"error: --tag {t!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        k, v = t.split("=", 1)
        tags[k] = v
    experiment = a.experiment or (None if a.run_id else "recsys-compress")
    sel = Selection(experiment=experiment, sweep=a.sweep, study=a.study, tags=tags, run_ids=a.run_id,
                    include_failed=a.include_failed)
    try:
        runs = load_runs(sel.experiment, a.uri, sweep=sel.sweep, study=sel.study, tags=sel.tags, run_ids=sel.run_ids,
                         include_failed=sel.include_failed)
        rep = build(runs, quality=a.quality, k=a.k)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out) / sel.slug()
    files = write_report(rep, out, title=f"recsys-compress: {sel.describe()}")
    print(rep.matrix_markdown())
    print()
    for n in rep.notes:
        print(n)
    print(f"\nwrote {len(files)} files to {out}/: " + ", ".join(sorted(p.name for p in files.values())))
    if not a.no_log:
        rid = log_report(out, sel, a.uri)
        print(f"logged as MLflow artifacts report/ of run {rid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
