"""Hydra entry point: compose conf/, hand the config to recsys.pipeline, return the objective(s) for sweepers."""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from recsys.errors import ConfigError


@hydra.main(config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    from recsys.pipeline import run

    # Lightning attaches its own console handler at import; Hydra already logs the root logger to console + file, so
    # keep one of the two to avoid every Lightning line being printed twice.
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).handlers.clear()
    try:
        return run(cfg)
    except ConfigError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
