"""Runtime comparison for quantized NeuMF: eager fp32, our packed modules on PyTorch's integer kernels (int8 / int4),
torch.ao ``quantize_dynamic`` int8, torchao int8 dynamic, ONNX Runtime fp32 and ORT int8 — batch-1 (one user x 100
candidates) p50/p99, full-catalogue p50 where the runtime has ``score_all``, and throughput; 1 thread (pinned, logged).

    python experiments/quant_backends.py                       # ml-1m-loo shapes (6040 x 3706, f=32, [128,64,32])
    python experiments/quant_backends.py --artifact .cache/dense/neumf-ml-1m-loo-....pt --requests 2000

Latency does not depend on trained values, so without --artifact a randomly initialised model of the given shapes is
measured. Figures go to stdout and to MLflow (experiment quant_backends).
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class _ScoreOnly(torch.nn.Module):
    """``score`` only: torch.ao's quantized Linear turns ``.weight`` into a method, which ``score_all`` cannot use."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.model.score(users, items)


def main(argv: list[str] | None = None) -> int:
    """Build each runtime, measure it, print a table and log it."""
    from recsys.compress.quant import QuantConfig, quantize_
    from recsys.export.artifact import load_artifact
    from recsys.export.onnx_backend import backend_scorer, score_gap
    from recsys.measure.latency import LatencyConfig, measure_latency
    from recsys.models.ncf import NeuMF
    from recsys.nn.quantized import torch_ao_dynamic_int8

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", help="a dense artifact (.pt) to measure instead of a random model")
    ap.add_argument("--users", type=int, default=6040)
    ap.add_argument("--items", type=int, default=3706)
    ap.add_argument("--factors", type=int, default=32)
    ap.add_argument("--layers", default="128,64,32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--uri", default=f"sqlite:///{ROOT}/mlruns/mlflow.db")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = load_artifact(args.artifact) if args.artifact else \
        NeuMF(args.users, args.items, args.factors, [int(x) for x in args.layers.split(",")]).eval()
    n_users, n_items = dense.n_users, dense.n_items
    work = Path(tempfile.mkdtemp(prefix="quant-backends-"))

    def packed(bits: int) -> torch.nn.Module:
        m = copy.deepcopy(dense)
        quantize_(m, QuantConfig(bits=bits, backend="torch", activations="dynamic"))
        return m

    runtimes = {
        "eager fp32": dense,
        "eager packed int8 (torch.ops.quantized)": packed(8),
        "eager packed int4 (torch.ops.quantized)": packed(4),
        "torch.ao quantize_dynamic int8": _ScoreOnly(torch_ao_dynamic_int8(copy.deepcopy(dense))),
        "torchao int8 dynamic": backend_scorer(dense, "torchao_int8", work),
        "onnxruntime fp32": backend_scorer(dense, "onnx", work, args.threads, "dense"),
        "onnxruntime int8 (quantize_dynamic)": backend_scorer(dense, "onnx_int8", work, args.threads, "dense"),
    }
    cfg = LatencyConfig(threads=args.threads, warmup=200, requests=args.requests, full_catalogue_requests=30,
                        throughput_batch=16384, throughput_repeats=10)
    g = torch.Generator().manual_seed(0)
    users, items = torch.randint(0, n_users, (4096,), generator=g), torch.randint(0, n_items, (4096,), generator=g)
    rows = {}
    for name, model in runtimes.items():
        lat = measure_latency(model, n_users, n_items, cfg)
        lat["score_gap_vs_fp32"] = score_gap(dense, model, users, items)
        rows[name] = lat
        print(f"{name:42s} p50 {lat['latency_p50_ms']:.4f} ms  p99 {lat['latency_p99_ms']:.4f} ms  "
              f"full {lat.get('latency_full_p50_ms', float('nan')):.3f} ms  {lat['throughput_per_s']:,.0f} pairs/s  "
              f"gap {lat['score_gap_vs_fp32']:.2e}", flush=True)
    import mlflow

    mlflow.set_tracking_uri(args.uri)
    mlflow.set_experiment("quant_backends")
    with mlflow.start_run(run_name=f"quant_backends threads={args.threads}", tags={"recsys.kind": "report"}):
        mlflow.log_params({"threads": args.threads, "requests": args.requests, "users": n_users, "items": n_items,
                           "artifact": args.artifact or "random-init", "torch_threads": torch.get_num_threads()})
        for name, lat in rows.items():
            key = "".join(c if c.isalnum() else "_" for c in name)
            mlflow.log_metrics({f"{key}/{k}": float(v) for k, v in lat.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
