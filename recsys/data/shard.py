"""Rank shards of one training epoch under DDP: every rank draws the same epoch plan from (seed, epoch), keeps its own
equal-sized share of the positives (rows, sessions), and draws that share's negatives from (seed, epoch, rank), so the
shards are disjoint and the ranks run the same number of steps (DDP needs it). Written here because Lightning's
DistributedSampler applies to map-style datasets; the training sets are pre-batched iterables with per-epoch negatives.
One process (no process group) is rank 0 of 1: the epoch is exactly the single-process one."""
from __future__ import annotations

import math

import numpy as np


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the running process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(n: int, rank: int, world: int) -> np.ndarray:
    """Positions of rank ``rank``'s share of ``n`` items: strided, ``n // world`` each (the < world left over are
    dropped, so that every rank has as many)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} not in [0, {world})")
    return np.arange(rank, (n // world) * world, world)


def rank_batch(batch_size: int, world: int) -> int:
    """Per-rank batch: the configured batch is the global one (DDP averages the ranks' gradients)."""
    return max(1, math.ceil(int(batch_size) / world))
