"""The seed's pruning table (dense / pruned 40 % / fine-tuned x magnitude / structured, mean ± std over seeds).

    python experiments/seed_table.py                         # runs `run.py -m experiment=seed_table` (multirun + table)
    python experiments/seed_table.py data=ml-100k hydra.sweeper.params.seed=42,43,44   # overrides pass through
    python experiments/seed_table.py --sweep multirun/2026-11-25/07-00-00              # table only, from MLflow

The table itself is built by ``recsys.report.prune_report`` (also the Hydra callback of the experiment), printed,
written as CSV + markdown under the sweep dir and logged to an MLflow report run.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    """Run the experiment through run.py, or rebuild the table of an existing sweep."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", help="existing sweep dir (tag sweep_dir) to tabulate instead of running")
    ap.add_argument("--uri", default=f"sqlite:///{ROOT}/mlruns/mlflow.db")
    ap.add_argument("--experiment", default="seed_table")
    ap.add_argument("--k", type=int, default=10)
    args, overrides = ap.parse_known_args(argv)
    if args.sweep:
        from recsys.report.prune_report import build_seed_table

        md, files = build_seed_table(args.sweep, args.uri, args.experiment, args.k)
        print(md)
        print(f"written: {', '.join(str(p) for p in files.values())}")
        return 0
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "experiment=seed_table", *overrides]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=os.environ.copy())


if __name__ == "__main__":
    raise SystemExit(main())
