"""A user's own data, end to end: the README's "Your own data" commands run as typed (plus tiny epochs, a temporary data
root and MLflow store) on small synthetic files of every format, and each family trains on CSV / TSV / Parquet / libFM /
date strings / {-1,1} labels / no test file through run.py's compose path."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from recsys.pipeline import run

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
TINY = {"neumf": ["model.factors=4", "model.mlp_layers=[8,4]"],
        "deepfm": ["model.embed_dim=4", "model.mlp_layers=[8]"],
        "gru4rec": ["model.hidden_size=8", "model.n_sample=4", "model.batch_size=8"]}
FAST = ["train.epochs=1", "trainer.enable_progress_bar=false", "bench.requests=10", "bench.warmup=2",
        "bench.full_catalogue_requests=2", "bench.throughput_repeats=2", "bench.throughput_batch=256",
        "finetune.epochs=1"]
# The served model (tracking.log_model) costs MLflow's requirement-inference subprocess per job; tests/test_serve.py
# proves it. Kept on for the first interaction-CSV README command (string ids -> the served id maps), off elsewhere.
NO_SERVE = ["tracking.log_model=false"]


# ------------------------------------------------------------------------------------------------ synthetic files
def interactions(rng: np.random.Generator, n_users: int = 60, n_items: int = 150) -> pd.DataFrame:
    """Users with 6-12 items each, popularity-skewed (so a model can learn something)."""
    p = 1.0 / np.arange(1, n_items + 1)
    rows = [(f"u{u}", f"sku{i}") for u in range(n_users)
            for i in rng.choice(n_items, rng.integers(6, 13), replace=False, p=p / p.sum())]
    return pd.DataFrame(rows, columns=["uid", "sku"])


def ctr_rows(rng: np.random.Generator, n: int = 400) -> pd.DataFrame:
    ad, user = rng.integers(0, 15, n), rng.integers(0, 20, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(ad - 7) / 3))).astype(int)
    tags = ["|".join(rng.choice(list("xyzw"), rng.integers(1, 3), replace=False)) for _ in range(n)]
    return pd.DataFrame({"clicked": y, "user": user, "ad": ad, "site": rng.choice(["a", "b", "c"], n), "tags": tags,
                         "price": rng.gamma(2, 10, n).round(2)})


def libfm_lines(df: pd.DataFrame) -> str:
    """{-1,1} labels, field:index (value 1), a numeric field (field:index:value) and a multi-hot field."""
    return "".join(f"{2 * r.clicked - 1} 0:{r.user} 1:{r.ad}:1 2:{r.site} 3:0:{r.price}"
                   + "".join(f" 4:{t}" for t in r.tags.split("|")) + "\n" for r in df.itertuples())


def sessions(rng: np.random.Generator, n: int = 160, n_items: int = 30) -> pd.DataFrame:
    """Sessions over 5 days: clicks walk along item ids (item i -> i+1 often), ISO date-times."""
    rows, t0 = [], pd.Timestamp("2024-03-01T00:00:00")
    for s in range(n):
        start = t0 + pd.Timedelta(minutes=int(s * 5 * 24 * 60 / n))
        item = int(rng.integers(0, n_items))
        for k in range(int(rng.integers(2, 7))):
            rows.append((f"s{s}", f"i{item}", (start + pd.Timedelta(seconds=30 * k)).isoformat()))
            item = (item + 1) % n_items if rng.random() < 0.7 else int(rng.integers(0, n_items))
    return pd.DataFrame(rows, columns=["session", "item", "time"])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """my-shop (interactions TSV + Parquet), my-ads (CTR CSV + libFM), my-ratings (TSV train/test with stars),
    my-sessions (';'-separated, ISO times)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for d in ("my-shop", "my-ads", "my-ratings", "my-sessions"):
        (root / d).mkdir()
    inter = interactions(rng)
    inter.to_csv(root / "my-shop" / "clicks.tsv", sep="\t", index=False)
    inter.to_parquet(root / "my-shop" / "clicks.parquet")
    ads = ctr_rows(rng)
    ads.to_csv(root / "my-ads" / "impressions.csv", index=False)
    ads.to_parquet(root / "my-ads" / "impressions.parquet")
    (root / "my-ads" / "train.libfm").write_text(libfm_lines(ads))
    r = interactions(rng).rename(columns={"uid": "user", "sku": "movie"})
    r["stars"] = rng.integers(1, 6, len(r))
    r["ts"] = 1_700_000_000 + rng.permutation(len(r)) * 60
    r.iloc[:-100].to_csv(root / "my-ratings" / "train.tsv", sep="\t", index=False)
    r.iloc[-100:].to_csv(root / "my-ratings" / "test.tsv", sep="\t", index=False)
    sessions(rng).to_csv(root / "my-sessions" / "clicks.csv", sep=";", index=False)
    return root


# ------------------------------------------------------------------------------------------------------ helpers
def model_of(args: list[str]) -> str:
    return next((a.split("=", 1)[1] for a in args if a.startswith("model=")), "neumf")


def run_job(tmp_path: Path, data_root: Path, args: list[str], serve: bool = False):
    """Compose ``args`` as run.py would (+ tiny sizes, temporary data root and MLflow store), run, read the run back."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[*args, f"paths.root_dir={tmp_path}", f"paths.data_dir={data_root}",
                                           *FAST, *TINY[model_of(args)], *([] if serve else NO_SERVE)])
    run(cfg)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("recsys-compress").experiment_id])
    return sorted(runs, key=lambda r: r.info.start_time)[-1]


def readme_commands() -> list[str]:
    """Every ``python run.py`` line of the README section "Your own data"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    return [ln.strip() for ln in section.splitlines() if ln.strip().startswith("python run.py")]


def readme_yaml() -> tuple[str, str]:
    """(relative path, text) of the user data YAML shown in the README section."""
    section = (ROOT / "README.md").read_text().split("## Your own data", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n# (\S+)\n(.*?)```", section, re.S)
    return block.group(1), block.group(2)


COMMANDS = readme_commands()


def test_conf_comment_commands_are_readme_commands():
    """The commands in the generic data presets' comments are README commands, so the test below runs them too."""
    found = 0
    for name in ("csv", "ctr_csv", "libfm", "sessions_csv"):
        text = (ROOT / "conf" / "data" / f"{name}.yaml").read_text()
        for cmd in re.findall(r"^#\s+(python run\.py .*)$", text, re.M):
            assert cmd.strip() in COMMANDS, (name, cmd)
            found += 1
    assert found == 4


def test_readme_section_documents_all_three_kinds():
    kinds = " ".join(COMMANDS)
    assert "data=csv" in kinds and "data=ctr_csv" in kinds and "data=libfm" in kinds and "data=sessions_csv" in kinds
    assert "--config-dir" in kinds and "--cfg job" in kinds and "\"data.sep=';'\"" in kinds


@pytest.mark.parametrize("command", [c for c in COMMANDS if "--config-dir" not in c and "--cfg" not in c])
def test_readme_command_runs(command, tmp_path, data_root):
    args = shlex.split(command)[2:]
    r = run_job(tmp_path, data_root, args, serve=command == next(c for c in COMMANDS if "data=csv" in c))
    source = next(a.split("=", 1)[1] for a in args if a.startswith("data.source="))
    assert r.info.status == "FINISHED"
    assert r.data.tags["dataset"] == source and r.info.run_name.startswith(f"{model_of(args)}-{source}")
    assert r.data.tags["split"] and r.data.metrics["data/skipped_lines"] == 0
    m = r.data.metrics
    if model_of(args) == "deepfm":
        assert 0.0 <= m["final/auc"] <= 1.0 and np.isfinite(m["final/logloss"])
        table = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").download_artifacts(r.info.run_id, "results.md",
                                                                                           str(tmp_path))
        assert "| AUC | logloss |" in Path(table).read_text()     # the CTR family's two main metrics, side by side
    elif model_of(args) == "gru4rec":
        assert "final/recall_at_20" in m and "final/mrr_at_20" in m
        assert "last 1 day" in r.data.tags["split"]
    else:
        assert "final/hr_at_10" in m
        assert "random item per user (seeded: seed=42)" in r.data.tags["split"]


def test_readme_config_dir_and_cfg_job(tmp_path, data_root):
    """The --config-dir user YAML and the --cfg job command, as real processes (Hydra's own command-line handling)."""
    rel, text = readme_yaml()
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_text(text)
    cfg_cmd = next(c for c in COMMANDS if "--cfg job" in c)
    out = subprocess.run([sys.executable, *shlex.split(cfg_cmd)[1:], f"paths.data_dir={data_root}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "name: my-ads" in out.stdout and "file: impressions.csv" in out.stdout
    cmd = next(c for c in COMMANDS if "--config-dir" in c)
    args = shlex.split(cmd)[1:]
    args[args.index("--config-dir") + 1] = str(tmp_path / rel.split("/")[0])
    out = subprocess.run([sys.executable, *args, f"paths.root_dir={tmp_path}", f"paths.data_dir={data_root}", *FAST,
                          *TINY["deepfm"], *NO_SERVE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    r = client.search_runs([client.get_experiment_by_name("recsys-compress").experiment_id])[0]
    assert r.data.tags["dataset"] == "my-ads" and r.info.status == "FINISHED"
    assert r.data.params["data.min_count"] == "2" and "final/auc" in r.data.metrics


# ------------------------------------------------------------------------------------- formats through each family
@pytest.mark.parametrize("args,check", [
    (["model=deepfm", "data=ctr_csv", "data.source=my-ads", "data.file=impressions.parquet", "data.label_col=clicked",
      "data.cat_cols=[ad]", "data.num_cols=[price]", "data.num_transform=standard"], "random rows"),
    (["model=deepfm", "data=ctr_csv", "data.source=my-ratings", "data.file=train.tsv", "data.sep=tab",
      "data.label_col=stars", "data.label_threshold=4", "data.cat_cols=[user,movie]", "data.split=time",
      "data.time_col=ts"], "time-ordered by ts"),
    (["data=csv", "data.source=my-ratings", "data.train_file=train.tsv", "data.test_file=test.tsv",
      "data.user_col=user", "data.item_col=movie", "data.rating_col=stars", "data.min_rating=3",
      "data.time_col=ts", "data.num_eval_negatives=20"], "test = the test file; validation = latest by timestamp"),
])
def test_format_variants_train(args, check, tmp_path, data_root):
    r = run_job(tmp_path, data_root, args)
    assert r.info.status == "FINISHED" and check in r.data.tags["split"]


def test_sessions_with_dates_and_test_fraction_and_sequences_from_csv(tmp_path, data_root):
    """Date-only times (%Y-%m-%d) and the last-fraction rule; a csv with a date time column feeds GRU4Rec too."""
    df = pd.read_csv(data_root / "my-sessions" / "clicks.csv", sep=";")
    df["time"] = df["time"].str[:10]
    (tmp_path / "d" / "s").mkdir(parents=True)
    df.to_parquet(tmp_path / "d" / "s" / "clicks.parquet")
    r = run_job(tmp_path, tmp_path / "d", ["model=gru4rec", "data=sessions_csv", "data.source=s",
                                           "data.train_file=clicks.parquet", "data.time_format=%Y-%m-%d",
                                           "data.test_fraction=0.2"])
    assert "last 0.2 of sessions" in r.data.tags["split"] and r.data.metrics["data/n_test_targets"] > 0
    df.rename(columns={"session": "user"}).to_csv(tmp_path / "d" / "s" / "log.tsv", sep="\t", index=False)
    r = run_job(tmp_path, tmp_path / "d", ["model=gru4rec", "data=csv", "data.source=s", "data.train_file=log.tsv",
                                           "data.time_col=time", "data.time_format=%Y-%m-%d"])
    assert r.info.status == "FINISHED" and r.data.tags["dataset"] == "s"
