"""CPU latency of a reloaded artifact: batch-1 requests (p50/p99), full-catalogue scoring of one user, throughput.

Thread count is fixed for the measurement and reported; every figure comes after a warm-up. Requests are generated
up front so the timed loop contains only the model call.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class LatencyConfig:
    threads: int = 1
    warmup: int = 100
    requests: int = 1000
    candidates: int = 100
    full_catalogue_requests: int = 50
    throughput_batch: int = 16384
    throughput_repeats: int = 20
    seed: int = 0


def _percentiles(times_s: list[float]) -> tuple[float, float, float]:
    a = np.asarray(times_s) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.mean())


def time_calls(fn: Callable[[int], object], n: int, warmup: int) -> list[float]:
    """Run ``fn(i)`` ``warmup`` times untimed, then ``n`` times timed; returns seconds per call."""
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


@torch.inference_mode()
def measure_latency(model: nn.Module, n_users: int, n_items: int, cfg: LatencyConfig | None = None,
                    score: Callable | None = None, score_all: Callable | None = None) -> dict[str, float]:
    """Latency figures of a user x items scorer (defaults: ``model.score`` / ``model.score_all``)."""
    cfg = cfg or LatencyConfig()
    model.eval()
    score = score or model.score
    score_all = score_all or getattr(model, "score_all", None)
    prev = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        g = np.random.default_rng(cfg.seed)
        n_req = cfg.requests + cfg.warmup
        users = torch.as_tensor(g.integers(0, n_users, n_req))
        cands = torch.as_tensor(g.integers(0, n_items, (n_req, cfg.candidates)))
        reqs = [(users[i].expand(cfg.candidates).contiguous(), cands[i]) for i in range(n_req)]
        t = time_calls(lambda i: score(*reqs[i]), cfg.requests, cfg.warmup)
        p50, p99, mean = _percentiles(t)
        out = {"latency_p50_ms": p50, "latency_p99_ms": p99, "latency_mean_ms": mean}
        if score_all is not None:
            u1 = [users[i:i + 1] for i in range(n_req)]
            t = time_calls(lambda i: score_all(u1[i]), cfg.full_catalogue_requests, max(5, cfg.warmup // 10))
            out["latency_full_p50_ms"], out["latency_full_p99_ms"], _ = _percentiles(t)
        bu = torch.as_tensor(g.integers(0, n_users, cfg.throughput_batch))
        bi = torch.as_tensor(g.integers(0, n_items, cfg.throughput_batch))
        t = time_calls(lambda i: score(bu, bi), cfg.throughput_repeats, 3)
        out["throughput_per_s"] = cfg.throughput_batch / float(np.median(t))
        out["latency_threads"] = float(cfg.threads)
        return out
    finally:
        torch.set_num_threads(prev)
