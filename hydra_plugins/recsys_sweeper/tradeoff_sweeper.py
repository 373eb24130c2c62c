"""The ``tradeoff`` sweeper as a Hydra plugin: Hydra imports every module under the ``hydra_plugins`` namespace,
registers the ``Sweeper`` subclass below and reads its config from the ConfigStore entry ``hydra/sweeper=tradeoff``.

The logic lives in ``recsys.sweep.TradeoffSweeper`` and is imported only when a sweep is built, so that every other
``run.py`` call (which scans plugins too) does not pay for Optuna / MLflow imports.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import MISSING, DictConfig


@dataclass
class TradeoffSweeperConf:
    """``hydra.sweeper`` of ``hydra/sweeper=tradeoff`` (the samplers are hydra-optuna-sweeper's
    ``hydra/sweeper/sampler`` group: tpe, random, nsgaii, ...)."""

    _target_: str = "hydra_plugins.recsys_sweeper.tradeoff_sweeper.TradeoffSweeperPlugin"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    sampler: Any = MISSING
    direction: Any = "maximize"                # one per entry of the job's `objectives`
    storage: Any = None                        # SQLAlchemy URL of the Optuna study (None: in memory)
    study_name: str | None = None
    n_trials: int = 20                         # complete trials the study should hold (resume runs the missing)
    n_jobs: int = 2                            # trials launched at once (by this worker; more workers may share the study)
    heartbeat_interval: int = 10               # s between a running trial's heartbeats (RDB storages)
    grace_period: int = 30                     # s without a heartbeat after which a trial counts as killed
    max_retry: int = 1                         # a killed trial is re-queued this many times (its params again)
    poll_seconds: float = 2.0                  # s between checks while other workers' trials fill the study
    max_failure_rate: float = 0.0
    custom_search_space: str | None = None     # import path of f(cfg, trial) adding dependent parameters
    params: dict[str, str] | None = None       # key: Hydra sweep expression (choice / range / interval / tag(log, ...))


ConfigStore.instance().store(group="hydra/sweeper", name="tradeoff", node=TradeoffSweeperConf, provider="recsys")


class TradeoffSweeperPlugin(Sweeper):
    """Optuna trade-off sweeper of recsys-compress (early checks, resume, MLflow study runs); see recsys/sweep.py."""

    def __init__(self, **kwargs: Any) -> None:
        from recsys.sweep import TradeoffSweeper

        self.sweeper = TradeoffSweeper(**kwargs)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.sweeper.sweep(arguments)
