"""Where a table came from: commit (+ dirty flag), CPU model, torch / numpy / MKL versions and thread counts.

One helper for every table the harness writes (a job's ``results.md``, ``recsys.report``, ``experiments/*``) and for
the MLflow tags of every run, so a figure can always be traced to the code and the machine that made it.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent


def git_commit() -> tuple[str, bool | None]:
    """(commit sha, dirty?) of the code that runs; ("unknown", None) outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], check=False, capture_output=True, text=True, timeout=5,
                             cwd=_REPO).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], check=False, capture_output=True,
                               text=True, timeout=5, cwd=_REPO).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return (sha, bool(dirty)) if sha else ("unknown", None)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _mkl_version(config: str) -> str:
    m = re.search(r"Math Kernel Library Version ([^\s-]+)", config)
    return m.group(1) if m else "none"


def provenance() -> dict[str, Any]:
    """The facts a table records about how it was made (read now: thread counts are the current settings)."""
    import numpy as np
    import torch

    sha, dirty = git_commit()
    config = torch.__config__.show()
    return {"commit": sha, "dirty": dirty, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "mkl": _mkl_version(config) if torch.backends.mkl.is_available() else "none",
            "mkldnn": torch.backends.mkldnn.is_available(),
            "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "unset")}


def commit_label(prov: dict[str, Any]) -> str:
    """``<sha>``, ``<sha>-dirty`` or ``unknown`` (the ``git_commit`` tag's form)."""
    return prov["commit"] + ("-dirty" if prov["dirty"] else "")


def provenance_tags(prov: dict[str, Any] | None = None) -> dict[str, str]:
    """The same facts as MLflow tags ``provenance.<key>`` (plus ``git_commit``)."""
    prov = prov or provenance()
    return {"git_commit": commit_label(prov), **{f"provenance.{k}": str(v) for k, v in prov.items()}}


def provenance_md(prov: dict[str, Any] | None = None) -> str:
    """One markdown line to put under a table: ``Made with: commit ... · CPU ... · torch ... · threads ...``."""
    p = prov or provenance()
    return (f"Made with: commit `{commit_label(p)}` · CPU {p['cpu']} ({p['cpu_count']} logical) · "
            f"python {p['python']} · torch {p['torch']} · numpy {p['numpy']} · MKL {p['mkl']} "
            f"(mkldnn {'on' if p['mkldnn'] else 'off'}) · threads: torch {p['torch_threads']}, "
            f"interop {p['torch_interop_threads']}, OMP_NUM_THREADS={p['OMP_NUM_THREADS']}, "
            f"MKL_NUM_THREADS={p['MKL_NUM_THREADS']}")


def with_provenance(markdown: str, prov: dict[str, Any] | None = None) -> str:
    """``markdown`` followed by its provenance line (what every written table goes through)."""
    return markdown.rstrip("\n") + "\n\n" + provenance_md(prov) + "\n"
