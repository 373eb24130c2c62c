"""Every documented command is run by a test (issue 16): the ``python run.py …`` / ``python -m recsys…`` /
``python experiments/…`` commands of README.md and of the comments in conf/**/*.yaml are extracted at test time (a
command added later is picked up), and each must be either

- run here (``RUN_HERE``: tiny overrides appended, the test's own data root, cache and MLflow store), or
- run on tiny copies of the datasets (``DRIVEN`` in tests/test_docs_driven.py: tiny overrides / flags appended), or
- named in ``COVERED`` with the test that runs it: that test must exist and contain the command's text, or
- named in ``NOT_RUN`` with the reason no test can run it on this machine (a cluster, hours of compute) — a list the
  coordinator sees, kept short and explicit instead of silently skipped.

A command in none of them fails ``test_every_documented_command_is_accounted_for``."""
from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_docs_driven import DRIVEN

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.docs

START = re.compile(r"python (?:run\.py|-m recsys[\w.]*|experiments/[\w./-]+\.py)")
# a run.py argument is a flag, an override (key=value, +key=..., ~key) or the value of --cfg / --info
RUN_FLAGS_WITH_VALUE = {"--cfg", "-c", "--info", "-i", "--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp"}


def _cut(text: str) -> str:
    """The command at the start of ``text``: up to a backtick, a comment, a closing parenthesis or a wide gap."""
    return re.split(r"`|\s#|\)|\s{2,}|\s\(", text, maxsplit=1)[0].strip().rstrip(".,:")


def _trim_run_args(cmd: str) -> str:
    """Drop prose after a run.py command (``python run.py --help lists them`` -> ``python run.py --help``)."""
    words = cmd.split()
    if words[:2] != ["python", "run.py"]:
        return cmd
    kept = words[:2]
    for w in words[2:]:
        if w.startswith("-") or "=" in w or kept[-1] in RUN_FLAGS_WITH_VALUE or w.startswith("~"):
            kept.append(w)
        else:
            break
    return " ".join(kept)


def extract(text: str) -> list[str]:
    """Every documented command in ``text`` (markdown or YAML comments), whitespace-normalised."""
    out = []
    for line in text.splitlines():
        for m in START.finditer(line):
            cmd = _trim_run_args(" ".join(_cut(line[m.start():]).split()))
            if cmd not in out:
                out.append(cmd)
    return out


def documented_commands() -> dict[str, str]:
    """command -> where it is documented (first place), from README.md and the comments of conf/**/*.yaml."""
    found: dict[str, str] = {}
    sources = [ROOT / "README.md", *sorted((ROOT / "conf").rglob("*.yaml"))]
    for path in sources:
        text = path.read_text()
        if path.suffix == ".yaml":
            text = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
        for cmd in extract(text):
            found.setdefault(cmd, str(path.relative_to(ROOT)))
    return found


TINY = ["train.epochs=1", "train.batch_size=8192", "model.factors=4", "model.mlp_layers=[8,4]", "bench.requests=30",
        "bench.warmup=5", "bench.full_catalogue_requests=3", "bench.throughput_repeats=2", "bench.throughput_batch=512",
        "trainer.enable_progress_bar=false", "eval.full_ranking=false", "tracking.log_model=false"]

# run here by test_documented_command_runs: command -> overrides appended (after TINY) or None for none at all
RUN_HERE: dict[str, list[str] | None] = {
    "python run.py": TINY,
    "python run.py --help": None,
    "python run.py --info plugins": None,
    "python run.py train.epochs=1": TINY,
    "python run.py quant=ptq quant.bits=8": TINY,
    "python run.py -m train.lr=0.001,0.0005 seed=1,2": TINY,
}

# command -> "tests/<file>.py::<test>" that runs it (checked: the test exists and its source contains the command), or
# (test, [fragments]) for a test that reads the command from the README itself: each fragment must be part of the
# command and appear in the test's source
COVERED: dict[str, str | tuple[str, list[str]]] = {
    "python run.py model=sasrec data=yoochoose train.epochs=5":
        ("tests/test_sasrec.py::test_readme_command_trains_and_evaluates_on_yoochoose", ["model=sasrec", "data=yoochoose"]),
    "python run.py trainer.strategy=ddp trainer.devices=2":
        ("tests/test_ddp.py::test_two_process_ddp_matches_single_process_hr", ["trainer.strategy=ddp", "trainer.devices=2"]),
    "python run.py -m hparams_search=train_lr hydra.sweeper.storage=$RECSYS_OPTUNA_STORAGE hydra.sweeper.n_jobs=1":
        ("tests/test_stack.py::test_three_workers_share_one_study_and_a_killed_trial_is_retried",
         ["run.py -m hparams_search=train_lr hydra.sweeper.storage=$RECSYS_OPTUNA_STORAGE ", "hydra.sweeper.n_jobs=1"]),
    "python run.py -m prune.ratio=0.2,0.4,0.6": "tests/test_sweep_commands.py::test_prune_ratio_sweep_runs_as_typed",
    "python run.py -m hparams_search=prune_lr": "tests/test_sweep_commands.py::test_hparams_search_prune_lr_runs_as_typed",
    "python run.py -m hydra/launcher=submitit_local train.lr=0.001,0.002":
        ("tests/test_submitit.py::test_submitit_local_multirun_lands_two_runs", ["submitit_local"]),
    **{c: ("tests/test_gru4rec_parity.py::test_presets_compose_and_train_one_epoch_on_yoochoose", [frag])
       for c, frag in (("python run.py experiment=gru4rec_xe_100", "gru4rec_xe_100"),
                       ("python run.py experiment=gru4rec_xe_480", "gru4rec_xe_480"))},
    **{c: ("tests/test_gru4rec_parity.py::test_presets_compose_and_train_one_epoch_on_yoochoose",
           ["gru4rec_ablation.py", "--epochs"]) for c in (
        "python experiments/gru4rec_ablation.py --preset gru4rec_xe_480 --epochs 10 model.logq_form=pop",
        "python experiments/gru4rec_ablation.py --preset gru4rec_xe_100 --epochs 1 --threads 1",
        "python experiments/gru4rec_ablation.py --preset gru4rec_xe_100 --epochs 1 --threads 1 model.carry_dropout=false "
        "model.init=torch model.sparse_items=false model.logq_form=pop model.mask_duplicates=true model.loss_norm=mean "
        "model.session_order=id model.epoch_end=stop model.momentum=0.0 train.optimizer=adagrad",
        "python experiments/gru4rec_ablation.py --preset gru4rec_xe_480 --epochs 10 --threads 2")},
    "python experiments/ncf_benchmark.py --compare train.optimizer=adam_loop train.optimizer=adam --epochs 2":
        ("tests/test_ncf_compare.py::test_compare_prints_one_row_per_path_with_epochs_hr_and_provenance",
         ["ncf_benchmark.py", "--compare", "train.optimizer=adam_loop"]),
    "python experiments/ncf_split.py --out ncf-split":   # the module fixture that every test of the file uses
        ("tests/test_ncf_split.py::rebuilt", ["ncf_split.py", "--out ncf-split"]),
    "python run.py experiment=ncf_paper data=ncf-ml-1m-split":
        "tests/test_ncf_split.py::test_documented_run_on_the_rebuilt_split",
    "python experiments/serve_load.py --quick":
        ("tests/test_serve_load.py::test_serve_load_quick_runs_every_cell", ["serve_load.py", "--quick"]),
    "python -m recsys.report --registry neumf-ml-100k":
        ("tests/test_serve.py::test_registry_listing_shows_each_version", ["recsys.report", "--registry", "neumf-ml-100k"]),
}

# test modules that read their commands from the README at test time: file -> (its function returning the commands,
# the tests that run them). A documented command is covered when that function returns it (checked below).
README_READERS: dict[str, tuple[str, list[str]]] = {
    "tests/test_own_data.py": ("readme_commands", ["test_readme_command_runs", "test_readme_config_dir_and_cfg_job"]),
}


def covered_by_readers() -> dict[str, str]:
    """command -> the README-reading test module that runs it (its listed tests must exist)."""
    import importlib.util

    out: dict[str, str] = {}
    for file, (func, tests) in README_READERS.items():
        for t in tests:
            assert _test_source(f"{file}::{t}") is not None, f"{file}::{t} does not exist"
        spec = importlib.util.spec_from_file_location(f"_docs_{Path(file).stem}", ROOT / file)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        for c in getattr(mod, func)():
            out.setdefault(_trim_run_args(" ".join(_cut(c).split())), file)
    return out


# command -> why no test runs it here (listed for the coordinator; each is a known gap, not a pass)
NOT_RUN: dict[str, str] = {
    "python run.py -m hydra/launcher=submitit_slurm hydra.launcher.partition=gpu hydra.launcher.timeout_min=120 "
    "hydra.launcher.cpus_per_task=8 hydra.launcher.gpus_per_node=1 hydra.launcher.mem_gb=32 train.lr=0.001,0.002":
        "needs a SLURM cluster (tests/test_submitit.py composes it only)",
}


def _test_source(node: str) -> str | None:
    file, _, name = node.partition("::")
    path = ROOT / file
    if not path.exists():
        return None
    src = path.read_text()
    for n in ast.walk(ast.parse(src)):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name:
            return ast.get_source_segment(src, n)
    return None


def test_extraction_finds_commands_in_code_prose_and_yaml_comments():
    md = ("```bash\npython run.py -m a=1,2   # comment\n```\nsee (`python experiments/x.py --quick`).\n"
          "(python run.py --help lists them)\npython -m recsys.report --study s  # c\n")
    assert extract(md) == ["python run.py -m a=1,2", "python experiments/x.py --quick", "python run.py --help",
                           "python -m recsys.report --study s"]
    docs = documented_commands()
    assert "python run.py -m prune.ratio=0.2,0.4,0.6" in docs                    # README
    assert "python run.py -m hparams_search=prune_lr data=ml-1m-loo" in docs     # conf/hparams_search comment


def test_every_documented_command_is_accounted_for():
    docs = documented_commands()
    readers = covered_by_readers()
    missing = {c: where for c, where in docs.items()
               if c not in RUN_HERE and c not in DRIVEN and c not in COVERED and c not in NOT_RUN and c not in readers}
    assert not missing, "documented commands that no test runs (add to RUN_HERE, DRIVEN, COVERED or NOT_RUN):\n" + "\n".join(
        f"  {where}: {c}" for c, where in missing.items())


def test_coverage_table_names_real_tests_that_contain_the_command():
    bad = []
    for cmd, entry in COVERED.items():
        node, fragments = (entry, [cmd]) if isinstance(entry, str) else entry
        src = _test_source(node)
        if src is None:
            bad.append(f"{node}: no such test (for {cmd!r})")
            continue
        for frag in fragments:
            if frag not in cmd or frag not in " ".join(src.split()):
                bad.append(f"{node}: {frag!r} is not both in the command {cmd!r} and in the test")
    assert not bad, "\n".join(bad)


def test_tables_hold_only_documented_commands():
    """A command removed from the docs must leave the tables too (else they would vouch for nothing)."""
    docs = documented_commands()
    stale = [c for c in [*RUN_HERE, *DRIVEN, *COVERED, *NOT_RUN] if c not in docs]
    assert not stale, stale


@pytest.mark.realdata
@pytest.mark.parametrize("command", sorted(RUN_HERE))
def test_documented_command_runs(command, tmp_path, shared_data_dir):
    extra = RUN_HERE[command]
    args = shlex.split(command)
    script = [sys.executable, *args[1:]] if args[1] == "-m" else [sys.executable, str(ROOT / args[1]), *args[2:]]
    if args[1] == "run.py" and extra is not None:
        script += [f"hydra.sweep.dir={tmp_path}/multirun", f"hydra.run.dir={tmp_path}/outputs", *extra]
    env = {**os.environ, "RECSYS_DATA_DIR": str(shared_data_dir), "RECSYS_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1",
           "RECSYS_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns/mlflow.db"}
    p = subprocess.run(script, cwd=ROOT if extra is None else tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, f"{command}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    if extra is not None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
        runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
        n_jobs = 1
        for a in args[2:]:
            if "=" in a and "," in a.split("=", 1)[1] and "[" not in a:
                n_jobs *= len(a.split("=", 1)[1].split(","))
        assert len(runs) == n_jobs and all(r.info.status == "FINISHED" for r in runs)
