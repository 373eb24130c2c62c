"""Tables from a runs DataFrame (see ``load.runs_frame``): the seed table (stage rows: dense / compressed / fine-tuned)
and the compression matrix (technique x setting -> quality, bytes, compression x, latency, speed-up).

Every number is a logged metric; several runs of one setting (seeds) become mean and sample std (ddof=1) of the logged
values. CSV columns are the MLflow metric keys (mean) and ``<key>_std``; markdown renders them for people."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

#: stages in pipeline order; others found in the runs follow, "final" (a copy of the last stage) and "data" never do
#: pipeline order of stage names: dense, then the compression stage (named by its technique's ``label``, or
#: ``compressed`` when several run), then fine-tuned
STAGE_ORDER = ("dense", "distilled", "lowrank", "pruned", "ptq", "qat", "compressed", "finetuned")
NOT_STAGES = ("final", "data", "study")
#: params that never define a setting: where things live, how the run is tracked, and the seed (seeds are averaged)
IGNORED_PARAMS = ("seed", "objectives")
IGNORED_PARAM_PREFIXES = ("paths.", "tracking.", "hydra.")
GROUP_COLS = ["dataset", "model", "technique", "setting"]


def _param(row: pd.Series, key: str) -> str | None:
    v = row.get(f"params.{key}")
    if v is None or (isinstance(v, float) and math.isnan(v)) or str(v) in ("None", "null", ""):
        return None
    return str(v)


def _num(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def technique(row: pd.Series) -> str:
    """Which compression a run applied, from its logged config: a ``technique`` tag if the pipeline sets one, else
    prune (``prune.ratio`` > 0, with ``prune.method``), quant (``quant.bits`` < 32), distill (``distill.alpha`` > 0);
    "dense" when none."""
    tag = row.get("tags.technique")
    if isinstance(tag, str) and tag:
        return tag
    parts = []
    ratio = _num(_param(row, "prune.ratio"))
    if ratio:
        method = _param(row, "prune.method")
        parts.append(f"prune:{method}" if method else "prune")
    bits = _num(_param(row, "quant.bits"))
    if bits and bits < 32:
        method = _param(row, "quant.method")
        parts.append(f"quant:int{bits:g}" + (f"-{method}" if method else ""))
    alpha = _num(_param(row, "distill.alpha"))
    if alpha:
        parts.append("distill")
    return "+".join(parts) or "dense"


def setting_keys(df: pd.DataFrame) -> list[str]:
    """Config keys whose logged value differs between the selected runs (seed, paths, tracking and ``*.method``,
    which the technique names, excluded): together they name a setting."""
    keys = []
    for col in sorted(c for c in df.columns if c.startswith("params.")):
        key = col[len("params."):]
        if key in IGNORED_PARAMS or key.startswith(IGNORED_PARAM_PREFIXES) or key.endswith(".method"):
            continue
        if df[col].astype(str).nunique(dropna=False) > 1:
            keys.append(key)
    return keys


def rounded(values: Sequence[str], digits: int = 3) -> dict[str, str]:
    """Each raw value -> its ``short_number`` form at ``digits`` significant digits, or at more digits when rounding
    would make two different values of one key print alike (settings are grouped by label, so they must not merge)."""
    from recsys.tracking import short_number

    raw = sorted(set(values))
    for d in range(digits, 18):
        short = {v: short_number(v, d) for v in raw}
        if len(set(short.values())) == len(raw):
            return short
    return {v: v for v in raw}


def with_groups(df: pd.DataFrame) -> pd.DataFrame:
    """The runs with group columns added: dataset, model, technique, setting (varying keys, seed excluded, numbers to 3
    significant digits), seed."""
    out = df.copy()
    keys = setting_keys(df)
    short = {k: rounded([v for _, r in df.iterrows() if (v := _param(r, k)) is not None]) for k in keys}
    out["dataset"] = [r.get("tags.dataset") or _param(r, "data.name") or "?" for _, r in df.iterrows()]
    out["model"] = [r.get("tags.model") or _param(r, "model.name") or "?" for _, r in df.iterrows()]
    out["technique"] = [technique(r) for _, r in df.iterrows()]
    # a key that is unset (None) for a run does not apply to it (e.g. prune.norm of magnitude pruning): leave it out
    out["setting"] = [", ".join(f"{k}={short[k][v]}" for k in keys if (v := _param(r, k)) not in (None, "None", ""))
                      or "(as configured)" for _, r in df.iterrows()]
    out["seed"] = [_param(r, "seed") or "?" for _, r in df.iterrows()]
    for c in ("dataset", "model"):
        out[c] = out[c].fillna("?").astype(str)
    return out


def stages(df: pd.DataFrame) -> list[str]:
    """Stages that some run logged metrics for, in pipeline order."""
    found = {c.split("/", 1)[0][len("metrics."):] for c in df.columns if c.startswith("metrics.") and "/" in c}
    found -= set(NOT_STAGES)
    return [s for s in STAGE_ORDER if s in found] + sorted(found - set(STAGE_ORDER))


def aggregate(groups: pd.DataFrame, by: Sequence[str], keys: Sequence[str]) -> pd.DataFrame:
    """Per group: n (runs), seeds, and for each metric key its mean (column named by the key) and std (``<key>_std``,
    ddof=1, empty for a single run). Keys no run logs give empty columns, never zeros."""
    rows = []
    for vals, g in groups.groupby(list(by), sort=False, dropna=False):
        vals = vals if isinstance(vals, tuple) else (vals,)
        row = dict(zip(by, vals))
        row["n"] = len(g)
        row["seeds"] = ",".join(sorted(set(g["seed"].astype(str)), key=lambda s: (len(s), s)))
        row["run_ids"] = ",".join(g["run_id"])
        for k in keys:
            col = f"metrics.{k}"
            arr = g[col].dropna().to_numpy(dtype=float) if col in g else np.array([])
            row[k] = float(np.mean(arr)) if len(arr) else np.nan
            row[f"{k}_std"] = float(np.std(arr, ddof=1)) if len(arr) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


SEED_METRICS = ("hr_at_{k}", "ndcg_at_{k}", "recall_at_{k}", "params_nonzero", "artifact_bytes", "latency_p50_ms",
                "latency_p99_ms", "throughput_per_s")
MATRIX_METRICS = ("hr_at_{k}", "ndcg_at_{k}", "recall_at_{k}", "artifact_bytes", "compression_ratio", "latency_p50_ms",
                  "speedup_p50")


def seed_table(groups: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """The seed's table: for each setting, one row per stage (dense, compressed, fine-tuned) with quality, size and
    latency. Columns are metric names without the stage (``hr_at_10``, ...)."""
    names = [m.format(k=k) for m in SEED_METRICS]
    parts = []
    for stage in stages(groups):
        keys = [f"{stage}/{n}" for n in names]
        have = groups[[f"metrics.{x}" for x in keys if f"metrics.{x}" in groups]].notna().any(axis=1)
        if not have.any():
            continue
        agg = aggregate(groups[have], GROUP_COLS, keys)
        agg.insert(len(GROUP_COLS), "stage", stage)
        agg = agg.rename(columns={f"{stage}/{n}{suffix}": f"{n}{suffix}" for n in names for suffix in ("", "_std")})
        parts.append(agg)
    table = pd.concat(parts, ignore_index=True)
    order = {s: i for i, s in enumerate(stages(groups))}
    table["_o"] = table["stage"].map(order)
    table = table.sort_values([*GROUP_COLS, "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)
    return table


def compression_matrix(groups: pd.DataFrame, k: int = 10, quality: Sequence[str] = ()) -> pd.DataFrame:
    """Technique x setting -> quality, artifact bytes, compression x, latency, speed-up of the final stage (what ships).
    Columns are the ``final/...`` metric keys."""
    names = [m.format(k=k) for m in MATRIX_METRICS]
    names = [q for q in quality if q not in names] + names
    keys = [f"final/{n}" for n in names]
    agg = aggregate(groups, GROUP_COLS, keys)
    tech_rank = agg["technique"].map(lambda t: (t != "dense", t))
    return agg.assign(_t=tech_rank).sort_values(["dataset", "model", "_t", "setting"], kind="stable") \
        .drop(columns="_t").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------------- rendering
def header(key: str) -> str:
    """Printed header for a metric key: ``final/hr_at_10`` -> ``HR@10``; the ``_at_`` form stays in keys and CSVs."""
    name = key.split("/", 1)[-1]
    pretty = {"artifact_bytes": "artifact bytes", "compression_ratio": "compression ×", "speedup_p50": "speed-up p50",
              "latency_p50_ms": "p50 ms", "latency_p99_ms": "p99 ms", "throughput_per_s": "pairs/s",
              "params_nonzero": "nonzero params", "params_total": "params", "latency_full_p50_ms": "full-catalogue ms"}
    if name in pretty:
        return pretty[name]
    if "_at_" in name:
        base, k = name.rsplit("_at_", 1)
        base = {"hr": "HR", "ndcg": "NDCG", "mrr": "MRR", "val_hr": "val HR", "val_ndcg": "val NDCG",
                "full_ndcg": "NDCG (full)"}.get(base, base)
        return f"{base}@{k}"
    return name


def fmt(key: str, v: float) -> str:
    name = key.split("/", 1)[-1]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if name in ("artifact_bytes", "params_nonzero", "params_total", "throughput_per_s") or name.startswith("n_"):
        return f"{v:,.0f}"
    if name in ("compression_ratio",) or name.startswith("speedup"):
        return f"{v:.2f}×"
    if name.endswith("_ms"):
        return f"{v:.4f}"
    if name.endswith("seconds"):
        return f"{v:.1f}"
    return f"{v:.4f}"


def to_markdown(table: pd.DataFrame, label_cols: Sequence[str], metric_cols: Sequence[str]) -> str:
    """A markdown table: label columns, then each metric as ``mean ± std`` (std only where several runs exist)."""
    heads = [*label_cols, "n", *(header(m) for m in metric_cols)]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for _, r in table.iterrows():
        cells = [str(r[c]) for c in label_cols] + [str(int(r["n"]))]
        for m in metric_cols:
            mean, std = r.get(m), r.get(f"{m}_std")
            cell = fmt(m, mean)
            if cell != "–" and std is not None and not (isinstance(std, float) and math.isnan(std)):
                cell += f" ± {fmt(m, std).rstrip('×')}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metric_columns(table: pd.DataFrame) -> list[str]:
    skip = {*GROUP_COLS, "stage", "n", "seeds", "run_ids"}
    return [c for c in table.columns if c not in skip and not c.endswith("_std")]


def drop_constant_labels(table: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    """Label columns worth printing: those that differ between rows (all shown for a single row)."""
    keep = [c for c in cols if table[c].nunique() > 1]
    return keep or [c for c in cols if c in ("technique", "setting")]
