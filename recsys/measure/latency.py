"""CPU latency of a reloaded artifact for every family: user x items (batch-1 p50/p99, full catalogue, throughput),
CTR table rows (`table_latency`) and session next-click requests (`session_latency`).

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


def percentiles(times_s: list[float]) -> tuple[float, float, float]:
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
        p50, p99, mean = percentiles(t)
        out = {"latency_p50_ms": p50, "latency_p99_ms": p99, "latency_mean_ms": mean}
        if score_all is not None:
            u1 = [users[i:i + 1] for i in range(n_req)]
            t = time_calls(lambda i: score_all(u1[i]), cfg.full_catalogue_requests, max(5, cfg.warmup // 10))
            out["latency_full_p50_ms"], out["latency_full_p99_ms"], _ = percentiles(t)
        bu = torch.as_tensor(g.integers(0, n_users, cfg.throughput_batch))
        bi = torch.as_tensor(g.integers(0, n_items, cfg.throughput_batch))
        t = time_calls(lambda i: score(bu, bi), cfg.throughput_repeats, 3)
        out["throughput_per_s"] = cfg.throughput_batch / float(np.median(t))
        out["latency_threads"] = float(cfg.threads)
        return out
    finally:
        torch.set_num_threads(prev)


@torch.inference_mode()
def table_latency(model: nn.Module, cat_rows: np.ndarray, dense_rows: np.ndarray, test_idx: np.ndarray, n_rows: int,
                  cfg: LatencyConfig) -> dict[str, float]:
    """CTR tables: batch-``candidates`` requests of real test rows (p50/p99) and throughput of ``throughput_batch``
    rows (``cat_rows`` / ``dense_rows``: the table's categorical ids and dense values)."""
    model.eval()
    prev = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        g = np.random.default_rng(cfg.seed)
        cat, dense = torch.from_numpy(cat_rows), torch.from_numpy(dense_rows)
        n = cfg.requests + cfg.warmup
        reqs = [torch.as_tensor(g.choice(test_idx, cfg.candidates)) for _ in range(n)]
        reqs = [(cat[r], dense[r]) for r in reqs]
        p50, p99, mean = percentiles(time_calls(lambda i: model.score(*reqs[i]), cfg.requests, cfg.warmup))
        r = torch.as_tensor(g.choice(n_rows, cfg.throughput_batch))
        t = time_calls(lambda i: model.score(cat[r], dense[r]), cfg.throughput_repeats, 2)
        return {"latency_p50_ms": p50, "latency_p99_ms": p99, "latency_mean_ms": mean,
                "throughput_per_s": cfg.throughput_batch / float(np.median(t)), "latency_threads": float(cfg.threads)}
    finally:
        torch.set_num_threads(prev)


def session_latency(model: nn.Module, n_items: int, cfg: LatencyConfig) -> dict[str, float]:
    """Session models (SessionModel contract): one request = one session's new click + its stored state -> scores of
    all items (batch 1); throughput = min(``throughput_batch``, 1024) sessions advanced by one click at once."""
    model.eval()
    prev = torch.get_num_threads()
    torch.set_num_threads(int(cfg.threads))
    try:
        with torch.inference_mode():
            g = torch.Generator().manual_seed(0)
            n = int(cfg.requests) + int(cfg.warmup)
            items = torch.randint(0, n_items, (n, 1), generator=g)
            state = model.serving_state(1, g)
            t = time_calls(lambda i: model.score_next(items[i], state), int(cfg.requests), int(cfg.warmup))
            p50, p99, mean = percentiles(t)
            bt = min(int(cfg.throughput_batch), 1024)   # sessions x all items: capped to keep memory sane
            bi = torch.randint(0, n_items, (bt,), generator=g)
            bs = model.serving_state(bt)
            t = time_calls(lambda i: model.score_next(bi, bs), int(cfg.throughput_repeats), 2)
    finally:
        torch.set_num_threads(prev)
    return {"latency_p50_ms": p50, "latency_p99_ms": p99, "latency_mean_ms": mean,
            "throughput_per_s": bt / float(np.median(t)), "latency_threads": float(cfg.threads)}
