"""Matplotlib plots of aggregated runs: quality vs sparsity per method, quality vs bytes / vs latency with the Pareto
front marked, latency bars per backend, and an Optuna study's front. Each function returns a Figure (or None when no
run logs what it needs) and draws only logged numbers."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

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


KEY_FONTSIZE = 7


def _wrap(lines: Sequence[str], width_in: float) -> list[str]:
    """Key lines wrapped to the figure's width (about 0.6 em per character at KEY_FONTSIZE), continuation indented."""
    import textwrap

    chars = max(20, int(width_in * 72 / (KEY_FONTSIZE * 0.62)))
    out: list[str] = []
    for line in lines:
        out += textwrap.wrap(line, chars, subsequent_indent="      ", break_on_hyphens=False) or [""]
    return out


def _with_key(width: float, height: float, key: Sequence[str], ncols: int = 1
              ) -> tuple[plt.Figure, list[plt.Axes], plt.Axes | None]:
    """A figure of ``ncols`` plot panels with, below them, a key axes holding ``key`` (one text line each): long
    labels go there instead of onto the plot, so they never run off the figure or cover points."""
    lines = _wrap(key, width)
    key_h = (len(lines) * KEY_FONTSIZE * 1.45 / 72 + 0.15) if lines else 0.0
    fig = plt.figure(figsize=(width, height + key_h))
    gs = fig.add_gridspec(2 if lines else 1, ncols, height_ratios=[height, key_h] if lines else [1])
    axes = [fig.add_subplot(gs[0, j]) for j in range(ncols)]
    kax = None
    if lines:
        kax = fig.add_subplot(gs[1, :])
        kax.axis("off")
        kax.text(0.0, 1.0, "\n".join(lines), transform=kax.transAxes, va="top", ha="left", fontsize=KEY_FONTSIZE,
                 family="monospace", linespacing=1.3)
    return fig, axes, kax


def _annotate_inward(ax: plt.Axes, x: float, y: float, text: str) -> None:
    """A short label beside a point, offset towards the middle of the axes so that it stays inside them."""
    fx, fy = (ax.transData + ax.transAxes.inverted()).transform((x, y))
    right, top = fx > 0.5, fy > 0.5
    ax.annotate(text, (x, y), textcoords="offset points", xytext=(-7 if right else 7, -7 if top else 7),
                ha="right" if right else "left", va="top" if top else "bottom", fontsize=8, fontweight="bold",
                annotation_clip=True)


def _err(table: pd.DataFrame, key: str) -> np.ndarray | None:
    col = f"{key}_std"
    return table[col].fillna(0).to_numpy() if col in table and table[col].notna().any() else None


def quality_vs(table: pd.DataFrame, x: str, y: str, xlog: bool = True) -> plt.Figure | None:
    """Scatter of ``y`` (maximised) against ``x`` (minimised) per setting, colour per technique, Pareto front joined."""
    t = table.dropna(subset=[x, y]) if x in table and y in table else table.iloc[0:0]
    if t.empty:
        return None
    front = pareto_mask(t[[y, x]].to_numpy(), ["maximize", "minimize"])
    f = t[front].sort_values(x)
    ids = [f"P{i}" for i in range(1, len(f) + 1)]
    fig, (ax,), _ = _with_key(7, 4.5, [f"{i:<4}{_label(r)}" for i, (_, r) in zip(ids, f.iterrows())])
    for tech, g in t.groupby("technique", sort=True):
        ax.errorbar(g[x], g[y], xerr=_err(g, x), yerr=_err(g, y), fmt="o", ms=6, capsize=3, alpha=0.85, label=tech)
    ax.step(f[x], f[y], where="post", color="black", lw=1.2, ls="--", zorder=0)
    ax.scatter(f[x], f[y], s=160, facecolors="none", edgecolors="black", lw=1.5, label="Pareto front (P1, P2, ...)",
               zorder=3)
    if xlog and (t[x] > 0).all() and t[x].max() / max(t[x].min(), 1e-300) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.1, y=0.12)
    ax.autoscale_view()  # fixes the limits, so that each label can be turned towards the middle
    for i, (_, r) in zip(ids, f.iterrows()):
        _annotate_inward(ax, r[x], r[y], i)
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
    short = max(map(len, labels)) <= 14   # short labels go under the bars; long ones into a key below the plots
    ticks = labels if short else [f"S{i}" for i in range(1, n + 1)]
    width = max(6, 1.1 * n + 3) * min(m, 2) / 1.3 if short else max(7, min(m, 2) * max(4.0, 0.6 * n + 2))
    fig, axes, _ = _with_key(width, 4.0, [] if short else [f"{t:<4}{lab}" for t, lab in zip(ticks, labels)], m)
    for ax, (key, name) in zip(axes, backends.items()):
        p99 = key.replace("p50_ms", "p99_ms")
        vals = table[key].to_numpy(dtype=float)
        yerr = None
        if p99 in table and table[p99].notna().any():
            yerr = np.vstack([np.zeros(n), np.clip(table[p99].to_numpy(dtype=float) - vals, 0, None)])
            yerr = np.nan_to_num(yerr)
        colors = plt.cm.tab10(pd.factorize(table["technique"])[0] % 10)
        ax.bar(range(n), vals, yerr=yerr, capsize=3, color=colors)
        top = np.nanmax(vals + (yerr[1] if yerr is not None else 0))
        if np.nanmin(vals) > 0 and top / np.nanmin(vals) > 20:
            ax.set_yscale("log")  # a p99 far above p50 (a busy machine) would flatten the p50 bars to nothing
        ax.set_xticks(range(n), ticks, rotation=35 if short else 0, ha="right" if short else "center", fontsize=7)
        ax.set_ylabel("p50 ms" + (" (whisker: p99)" if yerr is not None else "")
                      + (", log scale" if ax.get_yscale() == "log" else ""))
        ax.set_title(name, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("batch latency of the reloaded artifact, per backend")
    fig.tight_layout()
    return fig


def study_front(values: np.ndarray, directions: Sequence[str], names: Sequence[str], numbers: Sequence[int],
                title: str = "", params: Sequence[Mapping[str, object]] = ()) -> plt.Figure:
    """An Optuna study: the first objective against each other one; every trial grey, the Pareto front marked ``#n``
    and, given each trial's ``params``, keyed below the panels with its sampled values (3 significant digits)."""
    from recsys.tracking import short_number

    values = np.asarray(values, dtype=float)
    front = pareto_mask(values, directions)
    m = values.shape[1]
    panels = max(1, m - 1)
    key = [f"{'#' + str(numbers[i]):<5}" + ", ".join(f"{k}={short_number(v)}" for k, v in params[i].items())
           for i in np.flatnonzero(front)] if len(params) else []
    fig, axes, _ = _with_key(6 * panels, 4.5, key, panels)
    for j, ax in enumerate(axes, start=1):
        xj = j if m > 1 else 0
        ax.scatter(values[~front, xj], values[~front, 0], c="lightgrey", edgecolors="grey", label="trials")
        ax.scatter(values[front, xj], values[front, 0], c="tab:red", edgecolors="black", s=60, label="Pareto front")
        if m == 2:
            order = np.argsort(values[front, xj])
            ax.step(values[front, xj][order], values[front, 0][order], where="post", color="tab:red", lw=1, ls="--")
        ax.margins(x=0.1, y=0.12)
        ax.autoscale_view()
        for i in np.flatnonzero(front):
            _annotate_inward(ax, values[i, xj], values[i, 0], f"#{numbers[i]}")
        ax.set_xlabel(f"{names[xj]} ({directions[xj]})")
        ax.set_ylabel(f"{names[0]} ({directions[0]})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "Optuna study: Pareto front")
    fig.tight_layout()
    return fig


def finite(v: float | None) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))
