"""The seed's report table for pruning: dense / pruned / fine-tuned rows per method, from one sweep's MLflow runs.

Used by ``experiment=seed_table`` (a Hydra callback at ``on_multirun_end``) and by ``experiments/seed_table.py``.
Runs are selected and grouped with ``recsys.report`` (``load_runs``, ``with_groups``, ``aggregate``); this module only
picks the columns of the seed's table and renders mean ± std over seeds. MLflow and the rest of recsys.report are imported
lazily, so that Hydra can build the callback without loading them.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from recsys.fileio import write_csv, write_text
from recsys.provenance import with_provenance

STAGES = (("dense", "dense"), ("pruned", "pruned {ratio:.0%}"), ("finetuned", "fine-tuned"))
COLUMNS = (("hr_at_{k}", "HR@{k}", 1.0, "{:.4f}"), ("ndcg_at_{k}", "NDCG@{k}", 1.0, "{:.4f}"),
           ("recall_at_{k}", "recall@{k} (full)", 1.0, "{:.4f}"), ("artifact_bytes", "artifact MB", 1e-6, "{:.3f}"),
           ("latency_p50_ms", "batch-1 p50 ms", 1.0, "{:.4f}"), ("speedup_p50", "speed-up", 1.0, "{:.2f}x"),
           ("latency_full_p50_ms", "full-catalogue p50 ms", 1.0, "{:.3f}"),
           ("speedup_full_p50", "full speed-up", 1.0, "{:.2f}x"))


def seed_rows(runs: Any, k: int = 10) -> Any:
    """One row per (method, stage): mean and std (over seeds) of each column's metric; missing metrics stay NaN."""
    import pandas as pd

    from recsys.report import tables as T

    groups = T.with_groups(runs)
    groups["method"] = [str(r.get("params.prune.method", "none")) for _, r in groups.iterrows()]
    out = []
    for method, g in groups.groupby("method", sort=True):
        ratio = float(g["params.prune.ratio"].astype(float).iloc[0]) if "params.prune.ratio" in g else math.nan
        for stage, label in STAGES:
            if stage == "dense" and out and any(r["stage"] == "dense" for r in out):
                continue     # every method shares the same dense models (same seeds): show them once
            keys = [f"{stage}/{c.format(k=k)}" for c, *_ in COLUMNS]
            if stage == "finetuned":
                keys = [f"final/{c.format(k=k)}" if c.startswith("speedup") else f"{stage}/{c.format(k=k)}"
                        for c, *_ in COLUMNS]
            agg = T.aggregate(g.assign(_all=1), ["_all"], keys).iloc[0]
            row = {"method": "–" if stage == "dense" else method, "stage": label.format(ratio=ratio),
                   "n": int(agg["n"]), "seeds": agg["seeds"]}
            for key, (c, *_) in zip(keys, COLUMNS):
                name = c.format(k=k)
                row[name], row[f"{name}_std"] = agg[key], agg[f"{key}_std"]
            if stage == "dense":
                row["speedup_p50"], row["speedup_full_p50"] = 1.0, 1.0
            out.append(row)
    return pd.DataFrame(out)


def to_markdown(table: Any, k: int = 10) -> str:
    """Markdown of ``seed_rows``: mean ± std where several seeds exist, "–" where a stage does not log a metric."""
    heads = [h.format(k=k) for _, h, _, _ in COLUMNS]
    lines = ["| method | stage | " + " | ".join(heads) + " | seeds |", "|---" * (len(heads) + 3) + "|"]
    for _, r in table.iterrows():
        cells = []
        for c, _, scale, fmt in COLUMNS:
            v, s = r[c.format(k=k)], r[f"{c.format(k=k)}_std"]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("–")
                continue
            cell = fmt.format(v * scale)
            if isinstance(s, float) and not math.isnan(s):
                cell += " ± " + fmt.format(s * scale).rstrip("x")
            cells.append(cell)
        lines.append(f"| {r['method']} | {r['stage']} | " + " | ".join(cells) + f" | {r['seeds']} |")
    return "\n".join(lines)


def build_seed_table(sweep: str, uri: str, experiment: str, k: int = 10, out_dir: str | Path | None = None,
                     log: bool = True) -> tuple[str, dict[str, Path]]:
    """Table of the sweep's runs: printed markdown, written as CSV + markdown, logged to an MLflow report run."""
    from recsys.report import Selection, load_runs, log_report

    runs = load_runs(experiment, uri, sweep=sweep)
    table = seed_rows(runs, k)
    md = to_markdown(table, k)
    threads = sorted(set(runs.get("params.bench.threads", []).astype(str))) if "params.bench.threads" in runs else []
    data = sorted(set(runs.get("tags.dataset", []).astype(str))) if "tags.dataset" in runs else []
    note = (f"\n{len(runs)} runs of sweep {sweep}; data {', '.join(data)}; latency: eager PyTorch, reloaded "
            f"artifact, {', '.join(threads) or '?'} thread(s); a ± b = mean ± sample std over seeds; speed-up = "
            "dense ÷ compressed on the same runtime and threads; pruned rows are not exported (– = not measured).")
    out = Path(out_dir or sweep) / "seed_table"
    out.mkdir(parents=True, exist_ok=True)
    files = {"seed_table.csv": out / "seed_table.csv", "seed_table.md": out / "seed_table.md"}
    write_csv(files["seed_table.csv"], table, index=False)
    write_text(files["seed_table.md"], with_provenance(md + "\n" + note))
    if log:
        log_report(out, Selection(experiment=experiment, sweep=sweep), uri)
    return with_provenance(md + "\n" + note), files


class SeedTableCallback(Callback):
    """Hydra callback: after the multirun, build the seed table from this sweep's MLflow runs."""

    def __init__(self, k: int = 10) -> None:
        self.k = int(k)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        from recsys.tracking import normalise_uri

        sweep = str(config.hydra.sweep.dir)
        cfg = OmegaConf.to_container(config, resolve=False)
        uri_cfg = OmegaConf.create({k: v for k, v in cfg.items() if k != "hydra"})
        uri = normalise_uri(str(uri_cfg.tracking.uri))
        md, files = build_seed_table(sweep, uri, str(uri_cfg.tracking.experiment), self.k)
        print("\n" + md + "\n")
        print(f"seed table: {files['seed_table.md']}  {files['seed_table.csv']}")
