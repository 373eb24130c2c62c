"""Report labels for people: sampled hyper-parameters print at 3 significant digits (more only where two settings would
otherwise print alike), in the tables, the plots and the run names alike, and every text of every report plot lies
inside its figure once drawn (the Pareto plots' labels used to run off the edges)."""
from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest

from recsys import report
from recsys.report.plots import study_front
from recsys.report.tables import rounded
from recsys.tracking import readable_run_name, short_number

LRS = [0.0071144760093434225, 2.9375384576328295e-05, 0.0006251373574521745, 0.003967605077052989]
RATIOS = [0.4183591010202581, 0.23261584437607105, 0.7221948505396943, 0.14937107034296954]


def sweep_runs(lrs=LRS, ratios=RATIOS, seeds=(0,)) -> pd.DataFrame:
    """A load_runs-shaped frame of a prune x lr sweep, numbers of the kind a real 1-epoch sweep logs."""
    rng = np.random.default_rng(0)
    rows = []
    for i, (lr, ratio) in enumerate(zip(lrs, ratios)):
        for seed in seeds:
            hr = 0.33 - 0.03 * ratio + rng.normal(0, 0.003)
            p50 = 0.1 + rng.random() * 0.01
            row = {"run_id": f"r{i}{seed}", "run_name": f"neumf-ml-100k finetune.lr={lr}", "status": "FINISHED",
                   "params.finetune.lr": str(lr), "params.prune.ratio": str(ratio), "params.prune.method": "magnitude",
                   "params.seed": str(seed), "tags.dataset": "ml-100k", "tags.model": "neumf",
                   "metrics.dense/hr_at_10": 0.33, "metrics.finetuned/hr_at_10": hr, "metrics.final/hr_at_10": hr,
                   "metrics.final/artifact_bytes": 430_000 * (1 - ratio) + 40_000,
                   "metrics.final/latency_p50_ms": p50, "metrics.final/latency_p99_ms": p50 * 400,
                   "metrics.final/latency_full_p50_ms": p50 * 2, "metrics.final/latency_full_p99_ms": p50 * 600}
            rows.append(row)
    return pd.DataFrame(rows)


def wide_sweep(n: int = 10) -> pd.DataFrame:
    """Ten settings of three sampled keys: labels as long as a real prune x lr x weight-decay study's (with the old
    text labels beside the Pareto points, three of them ran off the figure's edges on exactly these numbers)."""
    rng = np.random.default_rng(3)
    df = sweep_runs(list(10 ** rng.uniform(-5, -2, n)), list(rng.uniform(0.1, 0.95, n)))
    df["params.finetune.weight_decay"] = [str(x) for x in 10 ** rng.uniform(-6, -3, n)]
    return df


def test_short_number_is_the_one_rounding():
    assert short_number("0.0071144760093434225") == "0.00711"
    assert short_number(2.9375384576328295e-05) == "2.94e-05"
    assert short_number("0.0") == "0.0" and short_number("0.5") == "0.5"     # nothing to round: as given
    assert short_number("64") == "64" and short_number("adam") == "adam" and short_number(True) == "True"
    name = readable_run_name("neumf-ml-100k", ["finetune.lr=0.0071144760093434225", "model.factors=64"])
    assert name == "neumf-ml-100k finetune.lr=0.00711 model.factors=64"


def test_rounding_never_merges_two_settings():
    short = rounded(["0.0071144760093434225", "0.007114", "0.5"])
    assert len(set(short.values())) == 3
    assert short["0.5"] == "0.5" and short["0.007114"] == "0.007114" and short["0.0071144760093434225"] == "0.0071145"


def test_tables_show_rounded_settings(tmp_path):
    rep = report.build(sweep_runs(), plots=False)
    md = rep.matrix_markdown() + rep.seed_markdown()
    assert "finetune.lr=0.00711, prune.ratio=0.418" in md
    assert "finetune.lr=2.94e-05, prune.ratio=0.233" in md
    assert "0.0071144760093434225" not in md and "2.9375384576328295e-05" not in md
    assert len(rep.matrix) == 4                                     # four settings stay four rows
    files = report.write_report(rep, tmp_path)
    assert "finetune.lr=0.00711" in files["compression_matrix.csv"].read_text()


def texts_outside(fig: matplotlib.figure.Figure) -> list[str]:
    """Drawn text artists whose window extent is not inside the figure (1 px tolerance)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    bad = []
    texts = [t for ax in fig.axes for t in ax.texts] + list(fig.texts)
    texts += [t for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label)]
    for ax in (a for a in fig.axes if a.axison):  # the key below the plots is an axes without axes lines
        for axis in (ax.xaxis, ax.yaxis):   # tick labels that are drawn: those of ticks inside the view limits
            lo, hi = sorted(axis.get_view_interval())
            texts += [t for loc, t in zip(axis.get_ticklocs(), axis.get_ticklabels()) if lo <= loc <= hi]
    if fig._suptitle is not None:
        texts.append(fig._suptitle)
    for ax in fig.axes:
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
    for t in texts:
        if not t.get_visible() or not t.get_text():
            continue
        e = t.get_window_extent(renderer)
        if e.x0 < box.x0 - 1 or e.y0 < box.y0 - 1 or e.x1 > box.x1 + 1 or e.y1 > box.y1 + 1:
            bad.append(f"{t.get_text()!r} at {e.bounds} outside {box.bounds}")
    tight = fig.get_tightbbox(renderer)           # everything drawn, in inches
    inches = fig.bbox_inches
    if tight.x0 < -0.02 or tight.y0 < -0.02 or tight.x1 > inches.x1 + 0.02 or tight.y1 > inches.y1 + 0.02:
        bad.append(f"drawn content {tight.bounds} exceeds the figure {inches.bounds}")
    return bad


def all_text(fig: matplotlib.figure.Figure) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


@pytest.mark.parametrize("runs", [sweep_runs, lambda: sweep_runs(seeds=(0, 1)), wide_sweep],
                         ids=["4-settings", "2-seeds", "10-settings-3-keys"])
def test_report_plots_keep_every_label_inside_and_rounded(runs):
    import matplotlib.pyplot as plt

    frame = runs()
    rep = report.build(frame)
    assert {"quality_vs_bytes", "quality_vs_latency", "quality_vs_sparsity", "latency_by_backend"} <= set(rep.figures)
    try:
        for name, fig in rep.figures.items():
            assert texts_outside(fig) == [], name
            text = all_text(fig)
            for raw in frame["params.finetune.lr"].tolist() + frame["params.prune.ratio"].tolist():
                assert raw not in text, (name, raw)
            for ratio in frame["params.prune.ratio"]:
                assert f"prune.ratio={short_number(ratio)}" in all_text(rep.figures["latency_by_backend"])
        smallest = frame.loc[frame["metrics.final/artifact_bytes"].idxmin(), "params.prune.ratio"]
        assert f"prune.ratio={short_number(smallest)}" in all_text(rep.figures["quality_vs_bytes"])  # on the front
    finally:
        plt.close("all")


def test_study_front_keys_trials_inside_the_figure():
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(1)
    values = np.column_stack([rng.uniform(0.39, 0.41, 12), rng.uniform(1e5, 4e5, 12), rng.uniform(0.09, 0.11, 12)])
    params = [{"prune.ratio": float(r), "finetune.lr": float(lr)}
              for r, lr in zip(rng.uniform(0.1, 0.95, 12), 10 ** rng.uniform(-5, -2, 12))]
    fig = study_front(values, ["maximize", "minimize", "minimize"], ["final/val_hr_at_10", "final/artifact_bytes",
                      "final/latency_p50_ms"], list(range(12)), title="study prune_lr", params=params)
    try:
        assert texts_outside(fig) == []
        text = all_text(fig)
        assert f"prune.ratio={short_number(params[0]['prune.ratio'])}" in text or "prune.ratio=" in text
        assert all(repr(p["finetune.lr"]) not in text for p in params)
    finally:
        plt.close(fig)
