"""Load test of served models: each model (dense, int8, structured-pruned, KD student) is trained by the pipeline,
registered, served with ``mlflow models serve`` on 127.0.0.1, and driven by an asyncio HTTP client (aiohttp) at
concurrency 1 / 8 / 32 / 64 with two request kinds: top-10 over the full catalogue, and scores of 100 given candidates.
Per cell: requests/s, p50 / p99 ms, errors, server CPU (psutil, the server's process tree), the in-process latency of
the same pyfunc model beside it, and the server's overhead (HTTP p50 - in-process p50; at concurrency 1 that is the
server's own cost, above it queueing adds in).

    python experiments/serve_load.py                   # neumf on ml-1m-loo (3 epochs), 4 models x 2 kinds x 4 concurrencies
    python experiments/serve_load.py --quick           # tiny: ml-100k, 1 epoch, concurrency 1,4, 20 requests a cell

Time is bounded: each cell stops after ``--requests`` requests or ``--duration`` seconds (default 3000 / 8 s), so the
load phase of the full run takes at most 32 x 8 s plus the servers' start (all four start together); the bound is
printed before anything runs, and the training time once the models are trained. Loopback only; the client shares the
machine's cores with the server, so run it alone. Figures go to stdout and to MLflow (experiment ``serve_load``, one
child run per cell, provenance tags on the parent).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from recsys.provenance import provenance_tags, with_provenance  # noqa: E402

VARIANTS = {  # model name -> pipeline overrides (the KD student's sizes are filled in from the model config)
    "dense": [],
    "int8": ["quant=ptq", "quant.bits=8"],
    "structured": ["prune=structured", "prune.ratio=0.5", "finetune.lr=1e-3"],  # the README's rate for structured pruning
    "kd": ["distill=kd", "distill.baseline=false"],   # student epochs = train.epochs
}
FULL = ["data=ml-1m-loo", "train.epochs=3", "finetune.epochs=1"]   # bounded: see plan() and the docstring
QUICK = ["data=ml-100k", "train.epochs=1", "train.batch_size=4096", "model.factors=8", "model.mlp_layers=[16,8]",
         "finetune.epochs=0", "bench.requests=20", "bench.warmup=5",
         "bench.full_catalogue_requests=5", "bench.throughput_repeats=2", "bench.throughput_batch=1024",
         "eval.full_ranking=false"]


def train_and_register(variant: str, base: list[str], uri: str) -> tuple[str, int, int]:
    """Run the pipeline job of one variant; returns (models:/ URI of its registered model, n_users, n_items)."""
    from hydra import compose, initialize_config_dir
    from mlflow.tracking import MlflowClient

    from recsys.pipeline import run

    over = [*base, *VARIANTS[variant], f"tracking.uri={uri}", "tracking.experiment=serve_load_models",
            f"tracking.run_name=serve_load {variant}", "trainer.enable_progress_bar=false"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=over)
        if variant == "kd":  # a student half the teacher's size
            half = [f"distill.student.factors={max(1, cfg.model.factors // 2)}",
                    f"distill.student.mlp_layers=[{','.join(str(max(1, x // 2)) for x in cfg.model.mlp_layers)}]"]
            cfg = compose("config", overrides=over + half)
    run(cfg)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("serve_load_models")
    r = client.search_runs([exp.experiment_id], f"attributes.run_name = 'serve_load {variant}'",
                           order_by=["attributes.start_time DESC"], max_results=1)[0]
    return r.data.tags["registered_model"], int(r.data.metrics["data/n_users"]), int(r.data.metrics["data/n_items"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_server(model_uri: str, uri: str, workers: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    """``mlflow models serve`` in this environment (this checkout importable), started; ``wait_up`` waits for it."""
    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", model_uri,
                                 "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_up(proc: subprocess.Popen, url: str, model_uri: str, log_path: Path, timeout: float = 300) -> None:
    """Poll ``/ping`` until the server answers; raise with its log tail if it dies or ``timeout`` passes."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"mlflow models serve {model_uri} did not start:\n" + log_path.read_text()[-3000:])
        time.sleep(0.25)


def start_server(model_uri: str, uri: str, workers: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    """``launch_server`` + ``wait_up`` (the server is stopped if it does not come up)."""
    proc, url = launch_server(model_uri, uri, workers, log_path)
    try:
        wait_up(proc, url, model_uri, log_path)
    except RuntimeError:
        stop_server(proc)
        raise
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the server and its children (uvicorn workers)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def requests_of(kind: str, n_users: int, n_items: int, n: int, item_ids: np.ndarray, user_ids: np.ndarray,
                seed: int = 0) -> list[dict]:
    """One record per request: ``full`` = top-10 over the catalogue; ``candidates`` = scores of 100 given items."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rec = {"user_id": user_ids[rng.integers(n_users)].item(), "k": 10}
        if kind == "candidates":
            rec.update(k=100, item_ids=item_ids[rng.choice(n_items, min(100, n_items), replace=False)].tolist())
        out.append(rec)
    return out


async def drive(url: str, records: list[dict], concurrency: int, n_requests: int, duration: float
                ) -> tuple[list[float], int, float]:
    """``concurrency`` clients post one record each, until ``n_requests`` are sent or ``duration`` s have passed;
    returns (latencies in ms of the answered requests, errors, wall seconds)."""
    import aiohttp

    lat: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + duration

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal sent, errors
        while sent < n_requests and time.perf_counter() < deadline:
            rec = records[sent % len(records)]
            sent += 1
            t0 = time.perf_counter()
            try:
                async with session.post(url + "/invocations", json={"inputs": [rec]}) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        continue
            except (aiohttp.ClientError, asyncio.TimeoutError):
                errors += 1
                continue
            lat.append((time.perf_counter() - t0) * 1e3)

    conn = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return lat, errors, time.perf_counter() - t0


def in_process_ms(model: Any, records: list[dict], n: int) -> tuple[float, float]:
    """(p50, p99) ms of the same pyfunc model's ``predict`` on one record, in this process (no HTTP, no JSON)."""
    for rec in records[:10]:
        model.predict([rec])
    times = []
    for i in range(n):
        rec = records[i % len(records)]
        t0 = time.perf_counter()
        model.predict([rec])
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


KINDS = ("full", "candidates")
SERVER_START_S = 60     # printed estimate of the servers' start (all four together on 2 cores: 11-25 s seen)


def plan(models: list[str], levels: list[int], n_req: int, duration: float) -> str:
    """What will run and how long the load phase takes (printed before anything runs)."""
    cells = len(models) * len(KINDS) * len(levels)
    return (f"[serve_load] {len(models)} models x {len(KINDS)} request kinds x concurrency {levels} = {cells} cells, "
            f"each <= {n_req} requests or <= {duration:g} s; load phase <= {cells * duration / 60:.1f} min of cells "
            f"+ the servers' start (~{SERVER_START_S} s, all together) + in-process timing (~1 s a model), after "
            f"training {len(models)} pipeline jobs (their time is printed when done)")


def table_md(rows: list[dict]) -> str:
    head = ("| model | request | concurrency | req/s | p50 ms | p99 ms | errors | server CPU % | in-process p50 ms "
            "| in-process p99 ms | server overhead p50 ms | runtime |")
    lines = [head, "|---" * 12 + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['kind']} | {r['concurrency']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.2f} "
                     f"| {r['p99_ms']:.2f} | {r['errors']} | {r['server_cpu_percent']:.0f} | {r['inprocess_p50_ms']:.2f}"
                     f" | {r['inprocess_p99_ms']:.2f} | {r['overhead_p50_ms']:.2f} | {r['runtime']} |")
    return "\n".join(lines)


def load_cells(variant: str, url: str, pid: int, served: Any, runtime: str, model_uri: str, levels: list[int],
               n_req: int, duration: float) -> list[dict]:
    """Every (request kind, concurrency) cell of one served model; one row each, printed as it ends."""
    sdata = served.unwrap_python_model().rec.data
    rows = []
    for kind in KINDS:
        recs = requests_of(kind, len(sdata.user_ids), sdata.n_items, max(min(n_req, 2000), 50), sdata.item_ids,
                           sdata.user_ids)
        in50, in99 = in_process_ms(served, recs, 200)
        for c in levels:
            cpu0 = server_cpu_seconds(pid)
            lat, errors, wall = asyncio.run(drive(url, recs, c, n_req, duration))
            cpu = (server_cpu_seconds(pid) - cpu0) / max(wall, 1e-9) * 100
            p50 = float(np.percentile(lat, 50)) if lat else float("nan")
            rows.append({"model": variant, "kind": kind, "concurrency": c, "requests": len(lat) + errors,
                         "requests_per_s": len(lat) / wall, "p50_ms": p50,
                         "p99_ms": float(np.percentile(lat, 99)) if lat else float("nan"), "errors": errors,
                         "server_cpu_percent": cpu, "inprocess_p50_ms": in50, "inprocess_p99_ms": in99,
                         "overhead_p50_ms": p50 - in50, "model_uri": model_uri, "runtime": runtime})
            print(f"{variant:>10} {kind:>10} c={c:<3} {len(lat) / wall:9.1f} req/s  p50 {p50:7.2f} ms  p99 "
                  f"{rows[-1]['p99_ms']:7.2f} ms  errors {errors}  server CPU {cpu:5.0f}%  in-process p50 {in50:.2f} ms"
                  f"  overhead {p50 - in50:.2f} ms", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Train + register each model, serve them all, load each, print and log the table."""
    import mlflow

    from recsys.tracking import init_store, normalise_uri

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (ml-100k, 1 epoch, concurrency 1,4, 20 requests)")
    ap.add_argument("--models", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    ap.add_argument("--concurrency", default=None, help="comma list (default 1,8,32,64; --quick: 1,4)")
    ap.add_argument("--requests", type=int, default=None, help="requests per cell at most (default 3000; --quick: 20)")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per cell at most (default 8)")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn workers of the server")
    ap.add_argument("--overrides", nargs="*", default=[], help="pipeline overrides shared by all models (last wins)")
    ap.add_argument("--uri", default=f"sqlite:///{ROOT}/mlruns/mlflow.db")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in VARIANTS]
    if bad:
        ap.error(f"--models {bad}: must be among {list(VARIANTS)}")
    levels = [int(c) for c in (args.concurrency or ("1,4" if args.quick else "1,8,32,64")).split(",")]
    n_req = args.requests or (20 if args.quick else 3000)
    base = list({o.split("=", 1)[0]: o for o in [*(QUICK if args.quick else FULL), *args.overrides]}.values())
    uri = normalise_uri(args.uri)
    logdir = Path(ROOT / "outputs" / "serve_load")
    logdir.mkdir(parents=True, exist_ok=True)
    print(plan(models, levels, n_req, args.duration), flush=True)

    t0 = time.perf_counter()
    rows: list[dict] = []
    uris: dict[str, str] = {}
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    try:
        for v in models:
            uris[v] = train_and_register(v, base, uri)[0]
            if args.quick:   # tiny: a server starts while the next model trains (that job's latency is not the point)
                servers[v] = launch_server(uris[v], uri, args.workers, logdir / f"server-{v}.log")
        train_s = time.perf_counter() - t0
        print(f"[serve_load] trained and registered {len(models)} models in {train_s:.0f} s; serving them", flush=True)
        mlflow.set_tracking_uri(uri)
        for v in models:     # full run: all servers start together, after training (their start overlaps)
            if v not in servers:
                servers[v] = launch_server(uris[v], uri, args.workers, logdir / f"server-{v}.log")
        for v in models:
            wait_up(*servers[v], uris[v], logdir / f"server-{v}.log")
        print(f"[serve_load] {len(models)} servers up {time.perf_counter() - t0 - train_s:.0f} s after training",
              flush=True)
        for v in models:
            info = mlflow.models.get_model_info(uris[v])
            runtime = (info.metadata or {}).get("runtime", "?")
            served = mlflow.pyfunc.load_model(uris[v])   # the same model in this process: its id maps, its latency
            rows += load_cells(v, servers[v][1], servers[v][0].pid, served, runtime, uris[v], levels, n_req,
                               args.duration)
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    total_s = time.perf_counter() - t0

    table = table_md(rows)
    print("\n" + table)
    print(f"\n[serve_load] training {train_s:.0f} s, serving + load {total_s - train_s:.0f} s, total {total_s:.0f} s")
    exp_id = init_store(uri, "serve_load")
    with mlflow.start_run(experiment_id=exp_id, run_name="serve_load" + (" quick" if args.quick else "")) as parent:
        mlflow.set_tags(provenance_tags())
        mlflow.log_params({"quick": args.quick, "models": ",".join(models), "concurrency": ",".join(map(str, levels)),
                           "requests_per_cell": n_req, "duration_s": args.duration, "workers": args.workers,
                           "overrides": " ".join(base)[:6000], "host_cpus": os.cpu_count()})
        mlflow.log_metrics({"train_seconds": train_s, "total_seconds": total_s})
        mlflow.log_text(with_provenance(table), "serve_load.md")
        for r in rows:
            with mlflow.start_run(experiment_id=exp_id, nested=True,
                                  run_name=f"{r['model']} {r['kind']} c={r['concurrency']}"):
                mlflow.log_params({k: r[k] for k in ("model", "kind", "concurrency", "model_uri", "runtime")})
                mlflow.log_metrics({k: float(r[k]) for k in ("requests_per_s", "p50_ms", "p99_ms", "errors",
                                                             "server_cpu_percent", "inprocess_p50_ms",
                                                             "inprocess_p99_ms", "overhead_p50_ms", "requests")
                                    if np.isfinite(float(r[k]))})
        print(f"MLflow run {parent.info.run_id} (experiment serve_load)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
