"""Step-time ratios of NeuMF f=32 [128,64,32] training paths on ml-1m-loo, measured interleaved in ONE process (so a
busy machine slows every path alike): rounds of A/B/C/... over ``--steps`` steps each, median per-path time, ratio to
dense Adam (torch's default single-tensor loop). Bare loop over the harness's own epoch tensors; no quality figures
(``experiments/ncf_benchmark.py --compare`` gives HR@10 per path).

    RECSYS_DATA_DIR=../shared/datasets python experiments/sparse_step_ratio.py --batch-sizes 256 2048 --steps 400
    # paths: dense (torch's CPU-default Adam loop) | foreach | fused | lazy (SparseAdam + fused Adam) |
    # rowwise | rowwise_lazy (train.sparse=rowwise / rowwise_lazy: RowwiseAdam with / without catch-up) |
    # lightning (fused Adam through the harness's RankingTask + Lightning Trainer: the per-step loop overhead) |
    # frozen (embedding tables not trained: the floor any table-update path can reach)
    # --profile PATH: torch.profiler op table of that path instead
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from recsys.models import build_model  # noqa: E402
from recsys.tasks.base import get_family  # noqa: E402
from recsys.tasks.optim import build_sparse_adam  # noqa: E402

PATHS = ("dense", "foreach", "fused", "lazy", "rowwise", "rowwise_lazy", "lightning", "frozen")


def make(path: str, spec: dict, lr: float = 1e-3):
    """(model, optimizer) of one training path, same initial weights for all (seed 0)."""
    torch.manual_seed(0)
    m = build_model(spec)
    if path == "lightning":
        from recsys.tasks.ranking import RankingTask
        task = RankingTask(m, lr=lr)
        return m, task
    if path == "lazy":
        return m, build_sparse_adam(m, lr)[0]
    if path in ("rowwise", "rowwise_lazy"):
        return m, build_sparse_adam(m, lr, mode=path)[0]
    if path == "frozen":   # floor: embedding tables not trained at all (speed reference only, not a training path)
        for e in m.modules():
            if isinstance(e, torch.nn.Embedding):
                e.weight.requires_grad_(False)
        return m, torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr, fused=True)
    kw = {"dense": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[path]
    return m, torch.optim.Adam(m.parameters(), lr=lr, **kw)


def steps(m, o, U, I, Y, bs: int, k0: int, n: int) -> None:
    if isinstance(o, __import__("lightning").LightningModule):   # the harness's loop over the same batches
        lightning_steps(o, U, I, Y, bs, k0, n)
        return
    for j in range(n):
        s = ((k0 + j) * bs) % (len(U) - bs)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(m(U[s:s + bs], I[s:s + bs]), Y[s:s + bs])
        o.zero_grad()
        loss.backward()
        o.step()


def lightning_steps(task, U, I, Y, bs: int, k0: int, n: int) -> None:
    """``n`` training steps through a Lightning Trainer (no validation, no logger, no checkpoint), as fit() runs them.
    The optimizer state restarts each call (a fresh Trainer); it is not part of a step's cost."""
    import lightning as L
    from torch.utils.data import DataLoader

    batches = [(U[s:s + bs], I[s:s + bs], Y[s:s + bs])
               for s in (((k0 + j) * bs) % (len(U) - bs) for j in range(n))]
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(task, train_dataloaders=DataLoader(batches, batch_size=None))


def subnormal_share(opt: torch.optim.Optimizer) -> float:
    """Share of Adam's exp_avg / exp_avg_sq entries that are subnormal floats (0 < |x| < float32 tiny)."""
    tiny = torch.finfo(torch.float32).tiny
    n = sub = 0
    for st in opt.state.values():
        for k in ("exp_avg", "exp_avg_sq"):
            a = st[k].abs()
            sub += int(((a > 0) & (a < tiny)).sum())
            n += a.numel()
    return sub / max(n, 1)


def denormal_check(spec: dict, U, I, Y, bs: int, total: int) -> None:
    """Does the step slow down as training goes on, and is it subnormal Adam moments (see --denormal-steps)?"""
    m, o = make("dense", spec)
    k = 0
    while k < total:
        t = {False: 0.0, True: 0.0}
        for j in range(10):
            ftz = bool(j % 2)
            torch.set_flush_denormal(ftz)
            t0 = time.perf_counter()
            steps(m, o, U, I, Y, bs, k, 100)
            t[ftz] += time.perf_counter() - t0
            k += 100
        torch.set_flush_denormal(False)
        print(f"batch {bs} step {k:6d}: subnormal share of Adam moments {subnormal_share(o):.2e}; ms/step "
              f"flush-to-zero off {t[False] / 500 * 1e3:.2f}, on {t[True] / 500 * 1e3:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 2048])
    ap.add_argument("--steps", type=int, default=400, help="steps per path per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", choices=PATHS, help="instead: torch.profiler op table of this path")
    ap.add_argument("--denormal", action="store_true", help="torch.set_flush_denormal(True) first")
    ap.add_argument("--denormal-steps", type=int, default=0,
                    help="instead: train the dense path this many steps; every 1,000 report the share of subnormal "
                         "floats in Adam's moments and ms/step with flush-to-zero off vs on (alternating 100-step blocks)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.denormal:
        torch.set_flush_denormal(True)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=["data=ml-1m-loo", "model=neumf", "model.factors=32",
                                           "model.mlp_layers=[128,64,32]"])
    fam = get_family("ranking")
    data = fam.load_data(cfg)
    spec = fam.model_spec(OmegaConf.to_container(cfg.model, resolve=True), data)
    U, I, Y = fam.make_datamodule(data, cfg).train_data.epoch_tensors(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, ml-1m-loo NeuMF f=32 [128,64,32]", flush=True)
    for bs in args.batch_sizes:
        if args.denormal_steps:
            denormal_check(spec, U, I, Y, bs, args.denormal_steps)
            continue
        if args.profile:
            from torch.profiler import ProfilerActivity, profile
            m, o = make(args.profile, spec)
            steps(m, o, U, I, Y, bs, 0, 50)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                steps(m, o, U, I, Y, bs, 50, args.steps)
            print(f"== batch {bs}, path {args.profile}, {args.steps} steps ==")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
            continue
        runs = {p: make(p, spec) for p in args.paths}
        for p, (m, o) in runs.items():
            steps(m, o, U, I, Y, bs, 0, 20)   # warm-up
        t = {p: [] for p in args.paths}
        for r in range(args.rounds):
            for p, (m, o) in runs.items():
                t0 = time.perf_counter()
                steps(m, o, U, I, Y, bs, 20 + r * args.steps, args.steps)
                t[p].append(time.perf_counter() - t0)
        base = statistics.median(t["dense"]) if "dense" in t else None
        for p in args.paths:
            med = statistics.median(t[p])
            ratio = f"{base / med:.2f}x dense" if base else ""
            print(f"batch {bs:5d} {p:8s} {med / args.steps * 1e3:7.3f} ms/step (median of {args.rounds}) "
                  f"{bs * args.steps / med:>10,.0f} samples/s  {ratio}", flush=True)


if __name__ == "__main__":
    main()
