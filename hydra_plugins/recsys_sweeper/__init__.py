"""Hydra plugin package of recsys-compress: the Optuna trade-off sweeper (``hydra/sweeper=tradeoff``)."""
