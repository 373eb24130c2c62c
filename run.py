"""Hydra entry point: compose conf/, hand the config to recsys.pipeline, return the objective(s) for sweepers."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import yaml

import hydra
from omegaconf import DictConfig

from recsys import lifecycle
from recsys.errors import ConfigError, TrainingDiverged


@hydra.main(config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    from recsys.pipeline import run

    # Lightning attaches its own console handler at import; Hydra already logs the root logger to console + file, so
    # keep one of the two to avoid every Lightning line being printed twice.
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).handlers.clear()
    lifecycle.install_signal_handlers()   # in sweep workers too (each job's own main thread)
    try:
        return run(cfg)
    except ConfigError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingDiverged as e:
        print(f"\nerror: {e}\nThe MLflow run is marked FAILED; nothing was cached.", file=sys.stderr)
        raise SystemExit(1) from None
    except lifecycle.JobInterrupted as e:
        print(f"\n{e}: the MLflow run is marked KILLED; exit status {e.exit_code}", file=sys.stderr)
        if lifecycle.orphaned():   # a sweep worker whose launcher died: nobody to return to, the pool would linger
            sys.stderr.flush()
            os._exit(e.exit_code)
        raise SystemExit(e.exit_code) from None


def sweeps_by_itself(argv: list[str]) -> bool:
    """True when ``experiment=<name>`` names a table experiment that sweeps (``hydra.sweeper.params``) and no ``-m`` was
    given: Hydra reads ``hydra.mode`` only from the primary config or the command line, so the flag is added here to
    make ``python run.py experiment=seed_table`` run the whole table as documented."""
    if {"-m", "--multirun", "-r", "--run", "-c", "--cfg", "-i", "--info", "-h", "--help"} & set(argv):
        return False
    for arg in argv[1:]:
        if arg.startswith("experiment="):
            path = Path(__file__).resolve().parent / "conf" / "experiment" / f"{arg.split('=', 1)[1]}.yaml"
            if path.exists():
                doc = yaml.safe_load(path.read_text()) or {}
                return bool(((doc.get("hydra") or {}).get("sweeper") or {}).get("params"))
    return False


if __name__ == "__main__":
    if sweeps_by_itself(sys.argv):
        sys.argv.insert(1, "-m")
    os.environ[lifecycle.PARENT_ENV] = str(os.getpid())   # sweep workers watch this launcher (lifecycle.watch_parent)
    lifecycle.install_signal_handlers()
    try:
        main()
    except lifecycle.JobInterrupted as e:   # the launcher itself (a sweep waiting on its workers)
        print(f"\n{e}: sweep stopped; exit status {e.exit_code}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
