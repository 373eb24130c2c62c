"""Matplotlib plots of aggregated runs: quality vs sparsity per method, quality vs bytes / vs latency with the Pareto
front marked, latency bars per backend, and an Optuna study's front. Each function returns a Figure (or None when no
run logs what it needs) and draws only logged numbers."""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "nbagg", "ipympl"):
    matplotlib.use("Agg")  # files only, unless a notebook chose an inline backend
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from recsys.report.tables import header  # noqa: E402


def pareto_mask(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Non-dominated rows of ``points`` (n x m) given "maximize"/"minimize" per column; NaN rows are never on it."""
    pts = np.asarray(points, dtype=float).copy()
    sign = np.array([-1.0 if d.startswith("max") else 1.0 for d in directions])
    pts = pts * sign  # now: smaller is better everywhere
    ok = ~np.isnan(pts).any(axis=1)
    mask = np.zeros(len(pts), dtype=bool)
    for i in np.flatnonzero(ok):
        others = pts[ok]
        dominated = np.any(np.all(others <= pts[i], axis=1) & np.any(others < pts[i], axis=1))
        mask[i] = not dominated
    return mask


def _label(r: pd.Series) -> str:
    return r["technique"] if r["setting"] == "(as configured)" else f"{r['technique']} {r['setting']}"


def _err(table: pd.DataFrame, key: str) -> np.ndarray | None:
    col = f"{key}_std"
    return table[col].fillna(0).to_numpy() if col in table and table[col].notna().any() else None


def quality_vs(table: pd.DataFrame, x: str, y: str, xlog: bool = True) -> plt.Figure | None:
    """Scatter of ``y`` (maximised) against ``x`` (minimised) per setting, colour per technique, Pareto front joined."""
    t = table.dropna(subset=[x, y]) if x in table and y in table else table.iloc[0:0]
    if t.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for tech, g in t.groupby("technique", sort=True):
        ax.errorbar(g[x], g[y], xerr=_err(g, x), yerr=_err(g, y), fmt="o", ms=6, capsize=3, alpha=0.85, label=tech)
    front = pareto_mask(t[[y, x]].to_numpy(), ["maximize", "minimize"])
    f = t[front].sort_values(x)
    ax.step(f[x], f[y], where="post", color="black", lw=1.2, ls="--", zorder=0)
    ax.scatter(f[x], f[y], s=160, facecolors="none", edgecolors="black", lw=1.5, label="Pareto front", zorder=3)
    mid = (t[x].min() + t[x].max()) / 2
    for _, r in f.iterrows():
        right = r[x] > mid
        ax.annotate(_label(r), (r[x], r[y]), textcoords="offset points", xytext=(-8 if right else 8, 6), fontsize=7,
                    ha="right" if right else "left")
    if xlog and (t[x] > 0).all() and t[x].max() / max(t[x].min(), 1e-300) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(f"{header(x)} (lower is better)  [{x}]")
    ax.set_ylabel(f"{header(y)} (higher is better)  [{y}]")
    ax.set_title(f"{header(y)} vs {header(x)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def sparsity_column(groups: pd.DataFrame) -> str | None:
    """Where sparsity comes from: a logged ``final/sparsity`` metric, else the ``prune.ratio`` config key."""
    if "metrics.final/sparsity" in groups and groups["metrics.final/sparsity"].notna().any():
        return "metrics.final/sparsity"
    if "params.prune.ratio" in groups:
        return "params.prune.ratio"
    return None


def quality_vs_sparsity(groups: pd.DataFrame, y: str) -> plt.Figure | None:
    """Quality against sparsity, one line per method (technique), mean ± std over seeds; dense runs sit at 0."""
    col = sparsity_column(groups)
    ycol = f"metrics.{y}"
    if col is None or ycol not in groups:
        return None
    g = groups.assign(_x=pd.to_numeric(groups[col].replace({"None": np.nan}), errors="coerce"), _y=groups[ycol])
    g.loc[g["technique"] == "dense", "_x"] = g.loc[g["technique"] == "dense", "_x"].fillna(0.0)
    g = g.dropna(subset=["_x", "_y"])
    if g.empty or g["_x"].nunique() < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    dense = g[g["technique"] == "dense"]
    pruned = g[(g["technique"] != "dense") & (g["_x"] > 0)]
    if pruned.empty:
        return None
    for tech, t in pruned.groupby("technique", sort=True):
        t = pd.concat([dense, t])
        s = t.groupby("_x")["_y"].agg(["mean", "std", "count"]).reset_index().sort_values("_x")
        ax.errorbar(s["_x"], s["mean"], yerr=s["std"].fillna(0), marker="o", capsize=3, label=tech)
    if dense["_y"].notna().any():
        ax.axhline(float(dense["_y"].mean()), color="grey", ls=":", lw=1, label="dense")
    ax.set_xlabel("sparsity" + (" (prune.ratio)" if col == "params.prune.ratio" else " (final/sparsity)"))
    ax.set_ylabel(f"{header(y)}  [{y}]")
    ax.set_title(f"{header(y)} vs sparsity, per method")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


LATENCY_RE = re.compile(r"^final/latency_(?:(?P<name>[a-z0-9_]+)_)?p50_ms$")


def latency_backends(columns: Sequence[str]) -> dict[str, str]:
    """``final/latency[_<backend>][_full]_p50_ms`` keys -> labels ("eager 1 user × candidates", "onnx full-catalogue")."""
    out = {}
    for c in columns:
        m = LATENCY_RE.match(c)
        if not m:
            continue
        parts = (m.group("name") or "").split("_") if m.group("name") else []
        full = bool(parts) and parts[-1] == "full"
        backend = "_".join(parts[:-1] if full else parts) or "eager"
        out[c] = f"{backend} {'full-catalogue' if full else '1 user × candidates'}"
    return dict(sorted(out.items(), key=lambda kv: (kv[1].split()[0] != "eager", "full" in kv[1], kv[1])))


def latency_bars(table: pd.DataFrame) -> plt.Figure | None:
    """p50 latency per setting, one bar per backend / request kind logged (p99 as a whisker where logged)."""
    backends = {k: v for k, v in latency_backends(list(table.columns)).items() if table[k].notna().any()}
    if not backends:
        return None
    labels = [_label(r) for _, r in table.iterrows()]
    n, m = len(table), len(backends)
    fig, axes = plt.subplots(1, m, figsize=(max(6, 1.1 * n + 3) * min(m, 2) / 1.3, 4.5), squeeze=False)
    for ax, (key, name) in zip(axes[0], backends.items()):
        p99 = key.replace("p50_ms", "p99_ms")
        vals = table[key].to_numpy(dtype=float)
        yerr = None
        if p99 in table and table[p99].notna().any():
            yerr = np.vstack([np.zeros(n), np.clip(table[p99].to_numpy(dtype=float) - vals, 0, None)])
            yerr = np.nan_to_num(yerr)
        colors = plt.cm.tab10(pd.factorize(table["technique"])[0] % 10)
        ax.bar(range(n), vals, yerr=yerr, capsize=3, color=colors)
        ax.set_xticks(range(n), labels, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("p50 ms" + (" (whisker: p99)" if yerr is not None else ""))
        ax.set_title(name, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("batch latency of the reloaded artifact, per backend")
    fig.tight_layout()
    return fig


def study_front(values: np.ndarray, directions: Sequence[str], names: Sequence[str], numbers: Sequence[int],
                title: str = "") -> plt.Figure:
    """An Optuna study: the first objective against each other one; every trial grey, the Pareto front marked."""
    values = np.asarray(values, dtype=float)
    front = pareto_mask(values, directions)
    m = values.shape[1]
    panels = max(1, m - 1)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    for j, ax in enumerate(axes[0], start=1):
        xj = j if m > 1 else 0
        ax.scatter(values[~front, xj], values[~front, 0], c="lightgrey", edgecolors="grey", label="trials")
        ax.scatter(values[front, xj], values[front, 0], c="tab:red", edgecolors="black", s=60, label="Pareto front")
        if m == 2:
            order = np.argsort(values[front, xj])
            ax.step(values[front, xj][order], values[front, 0][order], where="post", color="tab:red", lw=1, ls="--")
        for i in np.flatnonzero(front):
            ax.annotate(f"#{numbers[i]}", (values[i, xj], values[i, 0]), textcoords="offset points", xytext=(5, 4),
                        fontsize=7)
        ax.set_xlabel(f"{names[xj]} ({directions[xj]})")
        ax.set_ylabel(f"{names[0]} ({directions[0]})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "Optuna study: Pareto front")
    fig.tight_layout()
    return fig


def finite(v: float | None) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))
