"""Pruning (``prune.method=magnitude|structured``): ``prune_(model, MagnitudePruning(...) | StructuredPruning(...))``
masks in place, ``strip_`` makes masks permanent, ``shrink`` removes masked units (structured) for real.

Layout: ``api`` (configs + verbs), ``callback`` (Lightning: masks kept / gradual schedule), ``technique`` (what the
pipeline runs). Which units a model has is the model's own ``unit_groups()`` (recsys/models/base.py).
"""
from recsys.compress.prune.api import (
                                       NORMS,
                                       SCHEDULES,
                                       SCOPES,
                                       TARGETS,
                                       MagnitudePruning,
                                       StructuredPruning,
                                       apply_masks_,
                                       at_ratio,
                                       cubic_sparsity,
                                       current_mask,
                                       effective,
                                       kept_units,
                                       magnitude_masks,
                                       magnitude_targets,
                                       mask_state,
                                       masked_params,
                                       n_removed,
                                       prune_,
                                       shrink,
                                       sparsity,
                                       spec_from,
                                       strip_,
                                       structured_masks,
                                       unit_groups,
)
from recsys.compress.prune.callback import PruningCallback
from recsys.models.base import UnitGroup

__all__ = ["NORMS", "SCHEDULES", "SCOPES", "TARGETS", "MagnitudePruning", "PruningCallback", "StructuredPruning",
           "UnitGroup", "apply_masks_", "at_ratio", "cubic_sparsity", "current_mask", "effective", "kept_units",
           "magnitude_masks", "magnitude_targets", "mask_state", "masked_params", "n_removed", "prune_", "shrink",
           "sparsity", "spec_from", "strip_", "structured_masks", "unit_groups"]
