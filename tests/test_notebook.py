"""notebooks/compare_runs.ipynb executes top to bottom (nbclient) against a synthetic MLflow store, and shows the
table and the plots."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from test_report_store import build_store

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "compare_runs.ipynb"


def test_compare_runs_notebook_executes(tmp_path, monkeypatch):
    uri, exp, logged = build_store(tmp_path)
    monkeypatch.setenv("RECSYS_TRACKING_URI", uri)
    monkeypatch.setenv("RECSYS_EXPERIMENT", exp)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    try:
        NotebookClient(nb, timeout=180, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    except Exception as e:  # noqa: BLE001 - CellExecutionError carries the cell's traceback
        pytest.fail(f"notebook failed: {e}")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert f"{len(logged)} runs from experiment {exp!r}" in text
    assert "| technique | setting | n | HR@10" in text and "prune:magnitude" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # sparsity, bytes, latency, latency bars
