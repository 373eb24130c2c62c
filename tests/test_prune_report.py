"""The seed table from a runs frame (the shape recsys.report.load_runs returns): dense once, pruned and fine-tuned
rows per method, mean ± sample std over seeds, "–" for what a stage does not measure."""
from __future__ import annotations

import pandas as pd
import pytest

from recsys.report.prune_report import seed_rows, to_markdown


def runs() -> pd.DataFrame:
    rows = []
    for method, hr_ft in (("magnitude", (0.60, 0.62, 0.64)), ("structured", (0.50, 0.52, 0.54))):
        for seed, ft in zip((42, 43, 44), hr_ft):
            rows.append({"run_id": f"{method}{seed}", "params.prune.method": method, "params.prune.ratio": "0.4",
                         "params.seed": str(seed), "tags.dataset": "ml-100k", "tags.model": "neumf",
                         "metrics.dense/hr_at_10": 0.65, "metrics.dense/artifact_bytes": 1e6,
                         "metrics.dense/latency_p50_ms": 0.1, "metrics.pruned/hr_at_10": ft - 0.1,
                         "metrics.finetuned/hr_at_10": ft, "metrics.finetuned/artifact_bytes": 5e5,
                         "metrics.finetuned/latency_p50_ms": 0.05, "metrics.final/speedup_p50": 2.0})
    return pd.DataFrame(rows)


def test_seed_rows_mean_std_and_layout():
    t = seed_rows(runs())
    assert list(t["stage"]) == ["dense", "pruned 40%", "fine-tuned", "pruned 40%", "fine-tuned"]
    assert list(t["method"]) == ["–", "magnitude", "magnitude", "structured", "structured"]
    ft = t[(t["method"] == "magnitude") & (t["stage"] == "fine-tuned")].iloc[0]
    assert ft["hr_at_10"] == pytest.approx(0.62) and ft["hr_at_10_std"] == pytest.approx(0.02)
    assert ft["n"] == 3 and ft["seeds"] == "42,43,44"
    md = to_markdown(t)
    assert "| magnitude | fine-tuned | 0.6200 ± 0.0200 |" in md
    assert "| structured | pruned 40% | 0.4200 ± 0.0200 | – |" in md      # pruned stage: no NDCG logged here
    assert "2.00x" in md and md.count("\n") == 6
