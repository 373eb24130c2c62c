"""The documented commands that train at documented size (ml-1m-loo, criteo, yoochoose, whole tables, sweeps, the
benchmarks) run here exactly as typed, with tiny-size overrides / flags appended, on a data root of tiny copies of
the same datasets (tests/tiny_data.py). Each group is one process (tests/docs_driver.py: the imports are paid once);
each command's exit status and the MLflow runs it created are checked, and a failure names the command.

tests/test_docs_commands.py counts every command of ``DRIVEN`` as accounted for."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.docs, pytest.mark.realdata]

# appended to every run.py job (a command's own value of the same key, typed before, is overridden: last one wins)
RUN = ["train.epochs=1", "trainer.enable_progress_bar=false", "eval.full_ranking=false", "tracking.log_model=false",
       "bench.requests=30", "bench.warmup=5", "bench.full_catalogue_requests=3", "bench.throughput_repeats=2",
       "bench.throughput_batch=512"]
NCF = ["train.batch_size=2048"]                     # every NCF job at the default batch, whatever its config says
FT = ["finetune.epochs=1"]
GRU = ["model.hidden_size=48", "model.n_sample=64"]   # the 480-unit default is sized for the full click log
SWEEP = ["hydra.sweeper.n_trials=2", "hydra.launcher.n_jobs=1"]   # joblib in this process, one trial at a time

Runs = dict[str, dict]


def jobs(runs: Runs) -> list[dict]:
    """The training jobs among ``runs`` (not the study / report runs, nor serve_load's table run and its row runs)."""
    return [r for r in runs.values() if r["tags"].get("recsys.kind") not in ("study", "report")
            and r["experiment"] != "serve_load"]


def kind(runs: Runs, k: str) -> list[dict]:
    return [r for r in runs.values() if r["tags"].get("recsys.kind") == k]


def params(runs: Runs, key: str) -> list[str]:
    return sorted(r["params"].get(key, "?") for r in jobs(runs))


def metric_endswith(runs: Runs, suffix: str) -> bool:
    return bool(jobs(runs)) and all(any(k.endswith(suffix) for k in r["metrics"]) for r in jobs(runs))


def artifact(run: dict, name: str) -> Path | None:
    """A logged artifact file of ``run`` (local store), searched by file name."""
    base = Path(run["artifact_uri"].removeprefix("file://"))
    found = list(base.rglob(name)) if base.exists() else []
    return found[0] if found else None


def table_rows(path: Path | None) -> int:
    """Data rows of a markdown table file (0 when missing)."""
    if path is None or not path.exists():
        return 0
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    return len([ln for ln in lines if not re.fullmatch(r"\|[\s:|-]+\|", ln)]) - 1   # less the header row


@dataclass
class Doc:
    """How a documented command runs here: appended words, the group (one process) and what it must produce."""

    group: str
    extra: list[str]
    jobs: int                                    # training runs it creates, all FINISHED
    check: Callable[[Runs, Path], bool] = lambda runs, root: True
    sweep_dir: bool = True                       # append hydra.run.dir / hydra.sweep.dir (run.py and its wrappers)
    env: dict = field(default_factory=dict)


ONE_LOO = "python run.py data=ml-1m-loo model.factors=32 model.mlp_layers=[128,64,32]"
DRIVEN: dict[str, Doc] = {
    # -- group ncf: NeuMF on ml-1m-loo, the seed / sparsity / quantization tables and their reports (one dense cache)
    ONE_LOO: Doc("ncf", RUN + NCF, 1, lambda r, _: params(r, "model.factors") == ["32"]
                 and params(r, "data.name") == ["ml-1m-loo"]),
    ONE_LOO + " model.pretrain=true": Doc("ncf", RUN + NCF, 1, lambda r, _: params(r, "model.pretrain") == ["True"]),
    ONE_LOO + " distill=kd distill.student.factors=8 distill.alpha=0.5 distill.temperature=2":
        Doc("ncf", RUN + NCF, 1, lambda r, _: params(r, "distill.method") == ["kd"]),
    "python run.py -m data=ml-1m-loo model.factors=32 model.mlp_layers=[128,64,32] "
    "distill=ranking distill.student.factors=4,8,16":
        Doc("ncf", RUN + NCF, 3, lambda r, _: params(r, "distill.student.factors") == ["16", "4", "8"]),
    ONE_LOO + " lowrank=svd lowrank.rank=8 finetune.epochs=2":
        Doc("ncf", RUN + NCF + FT, 1, lambda r, _: params(r, "lowrank.rank") == ["8"]),
    "python run.py -m data=ml-1m-loo model.factors=32 model.mlp_layers=[128,64,32] prune=magnitude "
    "prune.ratio=0.2,0.4,0.6":
        Doc("ncf", RUN + NCF + FT, 3, lambda r, _: params(r, "prune.ratio") == ["0.2", "0.4", "0.6"]),
    "python run.py data=ml-1m-loo prune=structured prune.ratio=0.5 finetune.epochs=2":
        Doc("ncf", RUN + NCF + FT, 1, lambda r, _: params(r, "prune.method") == ["structured"]),
    "python run.py experiment=seed_table":   # 3 seeds x 2 methods, then the table (Hydra callback)
        Doc("ncf", RUN + NCF + FT, 6, lambda r, _: len(kind(r, "report")) == 1 and table_rows(
            artifact(kind(r, "report")[0], "seed_table.md")) == 5),   # dense + 2 stages x 2 methods
    "python run.py -m experiment=seed_table data=ml-100k hydra.sweeper.params.seed=42":
        Doc("ncf", RUN + NCF + FT, 2, lambda r, _: params(r, "data.name") == ["ml-100k"] * 2),
    "python experiments/seed_table.py":      # overrides pass through to run.py; one seed here
        Doc("ncf", RUN + NCF + FT + ["hydra.sweeper.params.seed=42"], 2,
            lambda r, _: len(kind(r, "report")) == 1),
    "python -m recsys.report --experiment seed_table":   # reads the runs above
        Doc("ncf", [], 0, lambda r, root: len(kind(r, "report")) == 1
            and any((root / "reports").rglob("*.md")), sweep_dir=False),
    "python run.py experiment=ncf_paper": Doc("ncf", RUN + NCF, 1, lambda r, _: params(r, "model.pretrain") == ["True"]),
    "python run.py experiment=ncf_paper model.pretrain=false":
        Doc("ncf", RUN + NCF, 1, lambda r, _: params(r, "model.pretrain") == ["False"]),
    "python experiments/sparsity_frontier.py":   # 2 ratios x 2 methods; its own sweep dir under --root
        Doc("ncf", ["--root", "{root}", "--ratios", "0.2,0.9", *RUN, *NCF, *FT], 4,
            lambda r, _: table_rows(artifact(kind(r, "report")[0], "sparsity_frontier.md")) == 4, sweep_dir=False),
    "python experiments/ncf_benchmark.py":       # full ranking stays on: the script reports its seconds
        Doc("ncf", ["--epochs", "1", *NCF, RUN[1], *RUN[3:]], 1,
            lambda r, _: metric_endswith(r, "bench/harness_over_bare"), sweep_dir=False),
    "python experiments/ncf_benchmark.py --pretrain":
        Doc("ncf", ["--epochs", "1", *NCF, RUN[1], *RUN[3:]], 1,
            lambda r, _: params(r, "model.pretrain") == ["True"] and metric_endswith(r, "bench/harness_over_bare"),
            sweep_dir=False),
    "python experiments/quant_table.py":         # every row, then the table
        Doc("ncf", RUN + NCF + FT, 10, lambda r, _: table_rows(artifact(kind(r, "report")[0], "quant_table.md"))
            == 10, sweep_dir=False),
    "python experiments/quant_table.py data=ml-100k model.factors=8 model.mlp_layers=[64,32,16,8]":
        Doc("ncf", ["--rows", "fp32,int8_ptq", *RUN, *NCF], 2,
            lambda r, _: params(r, "data.name") == ["ml-100k"] * 2, sweep_dir=False),
    "python experiments/quant_table.py --table-only":   # rebuilds from the rows above
        Doc("ncf", [], 0, lambda r, _: len(kind(r, "report")) == 1
            and table_rows(artifact(kind(r, "report")[0], "quant_table.md")) >= 10, sweep_dir=False),
    # -- group other: DeepFM, GRU4Rec, Optuna sweeps, serving
    "python run.py model=deepfm data=ml-1m-loo": Doc("other", RUN, 1, lambda r, _: metric_endswith(r, "auc")),
    "python run.py model=deepfm data=criteo": Doc("other", RUN, 1, lambda r, _: metric_endswith(r, "auc")),
    "python run.py model=gru4rec data=yoochoose train.optimizer=adagrad train.lr=0.07 train.epochs=10":
        Doc("other", RUN + GRU, 1, lambda r, _: metric_endswith(r, "recall_at_20")),
    "python run.py model=gru4rec data=yoochoose distill=kd distill.student.hidden_size=32":
        Doc("other", RUN + GRU, 1, lambda r, _: params(r, "distill.student.hidden_size") == ["32"]),
    "python run.py -m model=neumf,deepfm,gru4rec prune=magnitude prune.ratio=0.5":
        Doc("other", RUN + FT, 3, lambda r, _: params(r, "model.name") == ["deepfm", "gru4rec", "neumf"]),
    "python run.py -m hparams_search=prune_lr data=ml-1m-loo":
        Doc("other", RUN + FT + SWEEP, 2, lambda r, _: len(kind(r, "study")) == 1),
    "python -m recsys.report --study prune_lr-ml-1m-loo-neumf":   # files + logged to the study's run
        Doc("other", [], 0, lambda r, root: (root / "reports" / "prune_lr-ml-1m-loo-neumf" / "report.md").exists(),
            sweep_dir=False),
    "python run.py -m hparams_search=prune_lr hydra.sweeper.n_trials=30":
        Doc("other", RUN + FT + SWEEP, 2, lambda r, _: len(kind(r, "study")) == 1),
    "python run.py -m hparams_search=train_lr": Doc("other", RUN + SWEEP, 2, lambda r, _: len(kind(r, "study")) == 1),
    # the same study resumes: with n_trials 3 (last word wins over the typed 30) exactly one more trial runs
    "python run.py -m hparams_search=train_lr hydra.sweeper.n_trials=30":
        Doc("other", RUN + SWEEP + ["hydra.sweeper.n_trials=3"], 1, lambda r, _: not kind(r, "study")),
    "python -m recsys.report --study train_lr-ml-100k-neumf":
        Doc("other", [], 0, lambda r, root: (root / "reports" / "train_lr-ml-100k-neumf" / "report.md").exists(),
            sweep_dir=False),
    "python experiments/serve_load.py":          # neumf on (tiny) ml-1m, one model, one concurrency level
        Doc("other", ["--models", "dense", "--concurrency", "1", "--requests", "10", "--duration", "5", "--uri",
                      "{uri}", "--overrides", *[w for w in RUN if "log_model" not in w], *NCF], 1,
            lambda r, _: any(x["name"] == "serve_load" for x in r.values()) and all(
                x["metrics"].get("errors", 0) == 0 for x in r.values()), sweep_dir=False),
}


def argv_of(command: str, doc: Doc, root: Path, i: int) -> list[str]:
    """The command's words after ``python`` (script made absolute), then the appended ones."""
    words = shlex.split(command)[1:]
    if words[0] != "-m":
        words[0] = str(ROOT / words[0])
    extra = [w.format(root=root, uri=f"sqlite:///{root}/mlruns/mlflow.db") for w in doc.extra]
    if doc.sweep_dir:
        extra += [f"hydra.run.dir={root}/hydra/{i}", f"hydra.sweep.dir={root}/hydra/{i}"]
    return [*words, *extra]


def _check(doc: Doc, runs: Runs, root: Path) -> str | None:
    """None when the command's own check holds, else why not (an exception in it names the command too)."""
    try:
        return None if doc.check(runs, root) else "its result check failed"
    except Exception as e:  # noqa: BLE001
        return f"its result check raised {e!r}"


@pytest.mark.parametrize("group", sorted({d.group for d in DRIVEN.values()}))
def test_documented_commands_run_on_tiny_data(group, tmp_path, tiny_data_dir):
    root = tmp_path / "root"
    root.mkdir()
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    cmds = [(c, d) for c, d in DRIVEN.items() if d.group == group]
    spec = {"cwd": str(root), "uri": uri,
            "env": {"RECSYS_DATA_DIR": str(tiny_data_dir), "RECSYS_ROOT": str(root), "RECSYS_TRACKING_URI": uri,
                    "OMP_NUM_THREADS": "1"},
            "commands": [{"command": c, "argv": argv_of(c, d, root, i)} for i, (c, d) in enumerate(cmds)]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RECSYS_OPTUNA_STORAGE", "MLFLOW_TRACKING_URI")}
    p = subprocess.run([sys.executable, str(ROOT / "tests" / "docs_driver.py"), str(tmp_path / "spec.json"), str(out)],
                       cwd=root, env=env, capture_output=True, text=True, timeout=900, check=False)
    results = json.loads(out.read_text()) if out.exists() else []
    bad = [] if p.returncode == 0 else [f"driver exit {p.returncode}: {p.stderr[-3000:]}"]
    for (command, doc), res in zip(cmds, results):
        runs = res["runs"]
        why = (f"exit status {res['rc']}" if res["rc"] != 0 else
               f"runs not FINISHED: {[r['status'] for r in runs.values()]}" if any(
                   r["status"] != "FINISHED" for r in runs.values()) else
               f"{len(jobs(runs))} training runs, expected {doc.jobs}" if len(jobs(runs)) != doc.jobs else
               _check(doc, runs, root))
        if why:
            bad.append(f"{command}\n  appended: {' '.join(doc.extra)}\n  -> {why}\n{res['error'] or ''}"
                       f"{res['output_tail'][-2500:]}")
    bad += [f"{c}: not run (driver stopped)" for c, _ in cmds[len(results):]]
    print("\n".join(f"{r['seconds']:7.1f}s  {r['command']}" for r in results))
    assert not bad, "\n\n".join(bad)
