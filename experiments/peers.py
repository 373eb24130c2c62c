"""Side-by-side benchmark against the reference implementations (issue 12): RecBole 1.2.1 and the official GRU4Rec.

The pairs run alternately in one process tree (peer, project, peer, project, ...), each side a subprocess of
``experiments/peers_workers.py`` under its own python, with torch pinned to ``--threads`` (and OMP/MKL_NUM_THREADS):

* NeuMF f=32, MLP 128-64-32, batch 256 and batch 2048 (lr 1e-3 Adam, 4 uniform training negatives per positive) on the
  project's own ml-1m-loo split, exported to RecBole atomic files (``train/valid/test.inter``: the same training rows,
  the same validation and test item per user). Quality for both sides = HR@10 / NDCG@10 of the test item among the
  project's cached 99 test negatives (``candidates.tsv``), scored by each model, ties counted against the positive.
  RecBole picks its best epoch on ``uni100`` validation (its own random 100 negatives); the project on its cached
  validation negatives. Batch = rows including negatives on both sides (RecBole rounds it to a multiple of 5).
* official GRU4Rec ``rsc15_xe_shared_100_best`` / ``yoochoose_xe_shared_best`` on yoochoose-100k train_full -> test
  (conservative ties) vs ``model=gru4rec data=yoochoose`` with every parameter the project has mapped to its key
  (the setting column lists the ones it cannot match).
* DeepFM (embedding 16, MLP 400-400-400, lr 1e-3 Adam, 4 training negatives, RecBole's Xavier-normal init through
  ``model.init=xavier_normal``) vs RecBole DeepFM on the project's
  ml-100k rating >= 4 split with the project's side features exported as ``.user`` / ``.item`` fields; quality = AUC /
  logloss pooled over the project's test candidates (positive vs its 99 negatives) for both.

Training time only: RecBole's ``_train_epoch`` is timed, the official GRU4Rec's per-epoch lines are parsed (its fit has
no validation), the project's epochs are timed minus the validation inside them. It refuses to start on a busy machine.

    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python experiments/peers.py \
        --recbole-python /path/venv/bin/python --gru4rec /path/GRU4Rec_PyTorch_Official \
        --gru4rec-python /path/venv/bin/python [--threads 2] [--only neumf|gru4rec|deepfm] [--epochs N] [--quick] \
        [--rounds N]

``--rounds N`` runs each pair N times, alternating which side goes first; the table gives each side's median and the
project's median ratio with every round's ratio (this shared 2-core machine's speed drifts by 10-30 % between runs
minutes apart, more than some of the gaps being measured).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKERS = ROOT / "experiments" / "peers_workers.py"

# official GRU4Rec parameter -> the project's Hydra key (None: the project has no such setting yet)
# the official training semantics the param files do not name (the switches the gru4rec_xe_* presets turn on)
GRU4REC_OFFICIAL = ["train.optimizer=adagradm", "model.carry_dropout=true", "model.init=official",
                    "model.sparse_items=true", "model.logq_form=official", "model.mask_duplicates=false",
                    "model.loss_norm=batch_size", "model.session_order=time", "model.epoch_end=drain",
                    "model.xe_eps=1e-24"]
GRU4REC_KEYS = {"loss": "model.loss", "constrained_embedding": "model.constrained_embedding",
                "embedding": "model.embedding", "elu_param": "model.elu_param", "layers": "model.hidden_size",
                "n_epochs": "train.epochs", "batch_size": "model.batch_size", "dropout_p_embed": "model.dropout_p_embed",
                "dropout_p_hidden": "model.dropout_p_hidden", "learning_rate": "train.lr", "momentum": "model.momentum",
                "n_sample": "model.n_sample", "sample_alpha": "model.sample_alpha", "bpreg": "model.bpreg",
                "logq": "model.logq"}


# ----------------------------------------------------------------------------------------------------- busy machine
def busy_reason(load1: float, n_cpus: int, others: Sequence[tuple[int, str, float]], max_load: float = 0.5,
                max_proc_cpu: float = 20.0) -> str | None:
    """Why the machine is too busy for a timing run (None when quiet): 1-minute load above ``max_load`` per CPU, or
    any other process above ``max_proc_cpu`` % of one CPU."""
    hot = [f"pid {pid} ({name}) {pct:.0f} % CPU" for pid, name, pct in others if pct > max_proc_cpu]
    if hot:
        return f"other processes use > {max_proc_cpu:.0f} % CPU: " + ", ".join(hot[:5])
    if load1 > max_load * n_cpus:
        return f"1-minute load average {load1:.2f} > {max_load * n_cpus:.2f} ({max_load} x {n_cpus} CPUs)"
    return None


def sample_processes(interval: float = 1.0) -> tuple[list[tuple[int, str, float]], str]:
    """(pid, name, % of one CPU) of every process except this one and its ancestors over ``interval`` s, and the source."""
    mine = {os.getpid(), *_ancestors()}
    try:
        import psutil

        procs = [p for p in psutil.process_iter(["pid", "name"]) if p.pid not in mine]
        for p in procs:
            try:
                p.cpu_percent(None)
            except psutil.Error:
                pass
        time.sleep(interval)
        out = []
        for p in procs:
            try:
                out.append((p.pid, p.info["name"] or "?", p.cpu_percent(None)))
            except psutil.Error:
                pass
        return out, "psutil"
    except ImportError:
        def ticks() -> dict[int, tuple[str, int]]:
            res = {}
            for d in Path("/proc").iterdir():
                if d.name.isdigit() and int(d.name) not in mine:
                    try:
                        raw = (d / "stat").read_text()
                        name, rest = raw[raw.index("(") + 1:raw.rindex(")")], raw[raw.rindex(")") + 2:].split()
                        res[int(d.name)] = (name, int(rest[11]) + int(rest[12]))
                    except (OSError, ValueError):
                        pass
            return res

        a = ticks()
        time.sleep(interval)
        b = ticks()
        hz = os.sysconf("SC_CLK_TCK")
        return [(pid, name, 100.0 * (t - a[pid][1]) / hz / interval) for pid, (name, t) in b.items() if pid in a], "/proc"


def _ancestors() -> list[int]:
    pids, pid = [], os.getppid()
    while pid > 1:
        pids.append(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


# ------------------------------------------------------------------------------------------------------------ exports
def export_ranking(split: Any, folder: Path, name: str) -> Path:
    """Write ``split`` (a project ImplicitSplit) as RecBole benchmark atomic files + the test candidates; returns
    ``folder/name``. Tokens are the project's own user/item indices, so both sides see the same ids."""
    out = folder / name
    out.mkdir(parents=True, exist_ok=True)
    for part, users, items in (("train", split.train_users, split.train_items), ("valid", split.val_users, split.val_items),
                               ("test", split.test_users, split.test_items)):
        _atomic(out / f"{name}.{part}.inter", "user_id:token\titem_id:token\n",
                "".join(f"{u}\t{i}\n" for u, i in zip(users.tolist(), items.tolist())))
    cands = split.test_candidates()
    _atomic(out / "candidates.tsv", "user_id\tcandidates (test item first, then the 99 cached negatives)\n",
            "".join(f"{u}\t{' '.join(map(str, c))}\n" for u, c in zip(split.test_users.tolist(), cands.tolist())))
    return out


def export_side_features(side: Any, folder: Path, name: str) -> tuple[list[str], list[str]]:
    """Write the project's DeepFM side features as RecBole ``.user`` / ``.item`` files (user/item id fields are the
    ``.inter`` ids; genres a token_seq); returns the (user, item) feature field names."""
    u_names = [n for n in side.field_names[:side.user_table.shape[1]] if n != "user"]
    i_names = [n for n in side.field_names[side.user_table.shape[1]:] if n != "item"]
    u_cols = [j for j, n in enumerate(side.field_names[:side.user_table.shape[1]]) if n != "user"]
    i_cols = [j for j, n in enumerate(side.field_names[side.user_table.shape[1]:]) if n != "item"]
    (folder / name).mkdir(parents=True, exist_ok=True)
    head = "user_id:token\t" + "\t".join(f"{n}:token" for n in u_names) + "\n"
    _atomic(folder / name / f"{name}.user", head, "".join(
        f"{u}\t" + "\t".join(str(row[j]) for j in u_cols) + "\n" for u, row in enumerate(side.user_table.tolist())))
    bags = ["genre" + (str(b) if b else "") for b in range(side.item_bags.shape[1])]
    head = "item_id:token\t" + "".join(f"{n}:token\t" for n in i_names) + "\t".join(f"{b}:token_seq" for b in bags) + "\n"
    lines = []
    for i, row in enumerate(side.item_table.tolist()):
        seqs = [" ".join(str(v) for v in bag if v) for bag in side.item_bags[i].tolist()]
        lines.append(f"{i}\t" + "".join(f"{row[j]}\t" for j in i_cols) + "\t".join(seqs) + "\n")
    _atomic(folder / name / f"{name}.item", head, "".join(lines))
    return u_names, i_names + bags


def read_atomic(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header field names and rows of one RecBole atomic file (what RecBole itself will parse)."""
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), [ln.split("\t") for ln in lines[1:]]


def _atomic(path: Path, header: str, body: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + body)
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------------------- GRU4Rec
def read_param_file(path: Path) -> dict[str, Any]:
    """The ``gru4rec_params`` OrderedDict of an official param file, read as literals (the file is never executed)."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "gru4rec_params" for t in node.targets):
            return dict(ast.literal_eval(node.value.args[0]))
    raise ValueError(f"{path}: no `gru4rec_params = OrderedDict([...])` assignment found")


def gru4rec_overrides(params: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Project Hydra overrides matching an official param dict, and the settings that have no project key."""
    out, unmatched = ["model=gru4rec", "data=yoochoose", *GRU4REC_OFFICIAL], []
    for k, v in params.items():
        key = GRU4REC_KEYS.get(k)
        if key is None:
            if not (k == "momentum" and float(v) == 0.0):
                unmatched.append(f"{k}={v}")
            continue
        if k == "layers":
            if len(v) != 1:
                unmatched.append(f"layers={v}")
            out += [f"model.layers={len(v)}", f"{key}={v[0]}"]
        else:
            out.append(f"{key}={str(v).lower() if isinstance(v, bool) else v}")
    return out, unmatched


# --------------------------------------------------------------------------------------------------------------- table
@dataclass
class Row:
    system: str
    setting: str
    seconds_per_epoch: float
    per_s: float
    unit: str
    quality: dict[str, float] = field(default_factory=dict)
    ratio: float | None = None   # project speed / peer speed (project rows only; the median over rounds)
    ratios: list[float] = field(default_factory=list)   # each round's ratio, in run order (project rows only)


def fmt_quality(q: dict[str, float]) -> str:
    keys = [k for k in ("hr_at_10", "ndcg_at_10", "recall_at_20", "mrr_at_20", "auc", "logloss") if k in q]
    return ", ".join(f"{k.replace('_at_', '@')} {q[k]:.4f}" for k in keys)


def markdown_table(rows: Sequence[Row]) -> str:
    """One markdown table: system, setting, s/epoch, samples|events/s, quality, project ÷ peer."""
    lines = ["| system | setting | s/epoch | samples or events/s | quality | project speed ÷ peer |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "–" if r.ratio is None else f"{r.ratio:.2f}×"
        if len(r.ratios) > 1:
            ratio += f" (rounds: {', '.join(f'{x:.2f}' for x in r.ratios)})"
        lines.append(f"| {r.system} | {r.setting} | {r.seconds_per_epoch:.1f} | {r.per_s:,.0f} {r.unit} | "
                     f"{fmt_quality(r.quality)} | {ratio} |")
    return "\n".join(lines)


def row_from(result: dict[str, Any], system: str, setting: str, unit: str, skip_first: bool) -> Row:
    """A table row from a worker's result; with ``skip_first`` the first epoch (warm-up) is left out when there are 2+."""
    secs = list(result["epoch_seconds"])
    if skip_first and len(secs) > 1:
        secs = secs[1:]
    spe = sum(secs) / len(secs)
    return Row(system, setting, spe, float(result["samples_per_epoch"]) / spe, unit, dict(result["quality"]))


def combine_rounds(peer_rows: Sequence[Row], proj_rows: Sequence[Row]) -> tuple[Row, Row]:
    """One (peer, project) pair of rows from the rounds of a pair: each side's median seconds per epoch and median
    quality metrics; the project's ratio is the median of the rounds' ratios (each round's two runs were adjacent in
    time, so a slow spell of the machine hits both sides of a ratio rather than one side of the table)."""
    out = []
    for rs in (peer_rows, proj_rows):
        spe = statistics.median(r.seconds_per_epoch for r in rs)
        per_epoch = rs[0].per_s * rs[0].seconds_per_epoch   # samples or events of one epoch
        quality = {k: statistics.median(r.quality[k] for r in rs if k in r.quality) for k in rs[0].quality}
        out.append(Row(rs[0].system, rs[0].setting, spe, per_epoch / spe, rs[0].unit, quality))
    out[1].ratios = [b.per_s / a.per_s for a, b in zip(peer_rows, proj_rows)]
    out[1].ratio = statistics.median(out[1].ratios)
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------------------------- run
@dataclass
class Side:
    system: str
    setting: str
    python: str
    kind: str
    spec: dict[str, Any]
    unit: str


def run_side(side: Side, threads: int, workdir: Path, log) -> dict[str, Any]:
    """One worker subprocess with threads pinned; its output goes to the log; returns its result JSON."""
    spec_path = workdir / f"spec-{time.monotonic_ns()}.json"
    out_path = spec_path.with_name(spec_path.name.replace("spec-", "result-"))
    spec_path.write_text(json.dumps({**side.spec, "threads": threads}))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [side.python, str(WORKERS), side.kind, "--spec", str(spec_path), "--out", str(out_path)]
    print(f"\n[peers] {side.system} | {side.setting}: {' '.join(cmd)}", flush=True)
    log.write(f"\n===== {side.system} | {side.setting}\n$ {' '.join(cmd)}\n")
    log.flush()
    t0 = time.perf_counter()
    cwd = ROOT if side.kind == "project" else workdir   # RecBole writes log_tensorboard/ into its cwd
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"{side.system} ({side.setting}) failed with exit code {proc.returncode}; see {log.name}")
    res = json.loads(out_path.read_text())
    print(f"[peers]   done in {time.perf_counter() - t0:.0f} s wall; train s/epoch "
          f"{[round(s, 1) for s in res['epoch_seconds']]}; {fmt_quality(res['quality'])}", flush=True)
    return res


def project_data(overrides: list[str]) -> Any:
    """The project's loaded data for ``overrides`` (the same cached split its worker will read)."""
    sys.path.insert(0, str(ROOT))
    from hydra import compose, initialize_config_dir

    from recsys.tasks.base import get_family

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=overrides)
    return get_family(cfg.model.task).load_data(cfg)


def neumf_pairs(args: argparse.Namespace, work: Path) -> list[tuple[Side, Side]]:
    data = "ml-100k" if args.quick else "ml-1m-loo"
    split = project_data([f"data={data}", "model=neumf"])
    folder = export_ranking(split, work / "recbole", "peers_ranking")
    epochs = args.epochs or (1 if args.quick else 3)
    pairs = []
    for batch in ((2048,) if args.quick else (256, 2048)):   # --quick: one short pair
        setting = f"NeuMF f=32, MLP 128-64-32, batch {batch}, {epochs} ep, {data} (project: train.sparse=auto)"
        spec = {"data_path": str(folder.parent), "dataset": folder.name, "candidates": str(folder / "candidates.tsv"),
                "epochs": epochs, "batch_size": batch, "lr": 1e-3, "num_negatives": 4, "factors": 32,
                "mlp_layers": [128, 64, 32]}
        over = [f"data={data}", "model=neumf", "model.factors=32", "model.mlp_layers=[128,64,32]",
                f"train.batch_size={batch}", f"train.epochs={epochs}", "train.lr=0.001", "train.optimizer=adam",
                # auto: row-wise Adam (dense Adam's math, batch rows only) where a batch touches <= 10 % of the rows
                # (batch 256 here), otherwise Adam over every row taking the hand-written step's row gradients
                # (ScatterAdam, batch 2048)
                "train.sparse=auto",
                "train.num_negatives=4", "trainer.enable_progress_bar=false", *args.project_override]
        pairs.append((Side("RecBole 1.2.1", setting, args.recbole_python, "recbole-neumf", spec, "samples/s"),
                      Side("project", setting, sys.executable, "project", {"overrides": over}, "samples/s")))
    return pairs


def gru4rec_pairs(args: argparse.Namespace, work: Path) -> list[tuple[Side, Side]]:
    root = Path(os.environ.get("RECSYS_DATA_DIR", ROOT / "data")) / "yoochoose-100k"
    train, test = root / "yoochoose-clicks-100k_train_full.txt", root / "yoochoose-clicks-100k_test.txt"
    for p in (train, test):
        if not p.exists():
            raise SystemExit(f"error: {p} not found (set RECSYS_DATA_DIR to the folder holding yoochoose-100k/)")
    pairs = []
    names = ["rsc15_xe_shared_100_best"] + ([] if args.quick else ["yoochoose_xe_shared_best"])
    for name in names:
        params = read_param_file(Path(args.gru4rec) / "paramfiles" / f"{name}.py")
        if args.epochs or args.quick:
            params["n_epochs"] = args.epochs or 1
        pfile = work / f"{name}.py"   # the same literal values (epochs possibly changed), as the official loader wants
        pfile.write_text("from collections import OrderedDict\ngru4rec_params = OrderedDict("
                         + repr(list(params.items())) + ")\n")
        over, unmatched = gru4rec_overrides(params)
        setting = f"`{name}` ({params['layers'][0]} units), {params['n_epochs']} ep" + (
            f"; project lacks {', '.join(unmatched)}" if unmatched else "")
        spec = {"checkout": args.gru4rec, "param_file": str(pfile), "train": str(train), "test": str(test)}
        over += ["trainer.enable_progress_bar=false", *args.project_override]
        pairs.append((Side("GRU4Rec official", setting, args.gru4rec_python, "gru4rec-official", spec, "events/s"),
                      Side("project", setting, sys.executable, "project", {"overrides": over}, "events/s")))
    return pairs


def deepfm_pairs(args: argparse.Namespace, work: Path) -> list[tuple[Side, Side]]:
    data = project_data(["data=ml-100k-pos4", "model=deepfm"])
    folder = export_ranking(data.split, work / "recbole", "peers_ctr")
    u_fields, i_fields = export_side_features(data.side, work / "recbole", "peers_ctr")
    epochs = args.epochs or (1 if args.quick else 10)
    setting = f"DeepFM emb 16, MLP 400-400-400, Xavier-normal init, batch 2048, {epochs} ep, ml-100k rating >= 4"
    spec = {"data_path": str(folder.parent), "dataset": folder.name, "candidates": str(folder / "candidates.tsv"),
            "epochs": epochs, "batch_size": 2048, "lr": 1e-3, "num_negatives": 4, "embed_dim": 16,
            "mlp_layers": [400, 400, 400], "user_fields": u_fields, "item_fields": i_fields}
    # model.init=xavier_normal: RecBole's DeepFM init (Xavier-normal tables and layers, zero biases), so the pair
    # differs in implementation, not in starting point
    over = ["data=ml-100k-pos4", "model=deepfm", "model.embed_dim=16", "model.mlp_layers=[400,400,400]",
            "model.dropout=0.0", "model.init=xavier_normal", "train.batch_size=2048", f"train.epochs={epochs}",
            "train.lr=0.001", "train.optimizer=adam", "train.num_negatives=4", "trainer.enable_progress_bar=false", *args.project_override]
    return [(Side("RecBole 1.2.1", setting, args.recbole_python, "recbole-deepfm", spec, "samples/s"),
             Side("project", setting, sys.executable, "project", {"overrides": over}, "samples/s"))]


def log_mlflow(uri: str, table: str, rows: list[Row], meta: dict[str, Any],
               artifact_location: str | None = None) -> str:
    """One MLflow run in experiment ``peers`` (the project's tracking helpers): the table as an artifact, each row's
    figures as metrics, threads / CPU / versions as params."""
    sys.path.insert(0, str(ROOT))
    from recsys import tracking

    location = artifact_location or str(ROOT / "mlruns" / "artifacts")
    with tracking.start_run(uri, "peers", "peers", artifact_location=location) as tr:
        tr.log_params({k: str(v)[:500] for k, v in meta.items()})
        for n, r in enumerate(rows):
            tag = f"row{n}_{'project' if r.system == 'project' else 'peer'}"
            tr.log_metrics({f"{tag}/seconds_per_epoch": r.seconds_per_epoch, f"{tag}/per_s": r.per_s,
                            **{f"{tag}/{k}": v for k, v in r.quality.items()},
                            **({f"{tag}/project_over_peer": r.ratio} if r.ratio is not None else {}),
                            **{f"{tag}/project_over_peer_round{k + 1}": x for k, x in enumerate(r.ratios)}})
        tr.log_text(table + "\n", "peers.md")
        return tr.run_id


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recbole-python", help="a python with RecBole 1.2.1 installed")
    ap.add_argument("--gru4rec", help="a checkout of hidasib/GRU4Rec_PyTorch_Official")
    ap.add_argument("--gru4rec-python", help="a python that can run the official GRU4Rec (torch, numpy, pandas, joblib)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None, help="override every pair's epochs (default: 3 NeuMF, "
                    "the param files' 10 for GRU4Rec, 10 DeepFM)")
    ap.add_argument("--only", choices=["neumf", "gru4rec", "deepfm"], action="append")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 epoch each, NeuMF on ml-100k at batch 2048 only, "
                    "the 100-unit GRU4Rec file only; no speed claims")
    ap.add_argument("--rounds", type=int, default=1, help="run each pair this many times, peer first in odd rounds and "
                    "the project first in even ones; the table gives medians and each round's ratio")
    ap.add_argument("--force", action="store_true", help="run even on a busy machine (the table says so)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "peers.md"),
                    help="markdown file for the table (the workers' logs go beside it as .log)")
    ap.add_argument("--tracking-uri", default=None, help="MLflow URI (default: $RECSYS_TRACKING_URI, "
                    "$MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db, as the report CLI)")
    ap.add_argument("--project-override", action="append", default=[], help="extra Hydra override for project runs")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds {args.rounds}: must be at least 1")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    which = args.only or ["neumf", "gru4rec", "deepfm"]
    need = {"neumf": ["recbole_python"], "deepfm": ["recbole_python"], "gru4rec": ["gru4rec", "gru4rec_python"]}
    for w in which:
        for attr in need[w]:
            if not getattr(args, attr):
                ap.error(f"--only {w} needs --{attr.replace('_', '-')}")
    others, source = sample_processes()
    reason = busy_reason(os.getloadavg()[0], os.cpu_count() or 1, others)
    if reason and not args.force:
        raise SystemExit(f"error: machine busy ({reason}; measured with {source}); rerun on a quiet machine")
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        work = Path(tmp)
        pairs = []
        for w in which:
            pairs += {"neumf": neumf_pairs, "gru4rec": gru4rec_pairs, "deepfm": deepfm_pairs}[w](args, work)
        rows, versions, threads_seen = [], {}, set()
        log_path = Path(args.out).with_suffix(".log")
        with open(log_path, "w") as log:
            for peer, proj in pairs:
                results: dict[str, list[Row]] = {"peer": [], "project": []}
                for rnd in range(args.rounds):
                    for who, side in (("peer", peer), ("project", proj))[::1 if rnd % 2 == 0 else -1]:
                        res = run_side(side, args.threads, work, log)
                        versions.update({f"{side.kind}/{k}": v for k, v in res.get("versions", {}).items()})
                        threads_seen.add(res["threads"])
                        results[who].append(row_from(res, side.system, side.setting, side.unit, skip_first=False))
                rows += combine_rounds(results["peer"], results["project"])
    table = markdown_table(rows)
    sys.path.insert(0, str(ROOT))
    from recsys import provenance

    meta = {"threads": args.threads, "rounds": args.rounds, "torch_threads_reported": sorted(threads_seen),
            "cpu": provenance.cpu_model(), "busy_check": reason or f"quiet ({source})", "quick": args.quick,
            "versions": versions, "python": platform.python_version()}
    note = (f"\n\n{args.threads} torch thread(s) per side (reported {sorted(threads_seen)}), {meta['cpu']}; "
            + (f"{args.rounds} rounds a pair (medians; ratios per round in run order); " if args.rounds > 1 else "")
            + f"training time only; busy check: {meta['busy_check']}"
            + ("; --quick smoke run: no speed claims" if args.quick else ""))
    sys.path.insert(0, str(ROOT))
    from recsys.provenance import provenance_md
    from recsys.report.load import resolve_uri

    note += "\n\n" + provenance_md()  # the commit, CPU, versions and threads this table was made with
    out = Path(args.out)
    _atomic(out, "", table + note + "\n")
    print("\n" + table + note)

    run_id = log_mlflow(resolve_uri(args.tracking_uri), table + note, rows, meta)
    print(f"[peers] table: {out}; worker logs: {log_path}; MLflow run {run_id} (experiment peers)")


if __name__ == "__main__":
    main()
