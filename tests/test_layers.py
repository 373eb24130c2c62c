"""The module layers of docs/architecture.md hold: every ``recsys`` import (top-level or lazy, read from the source)
goes to the same or a lower layer, so there is no import circle between packages and, e.g., export never imports
compress. Fast (ast only); the fresh-interpreter import of every module is in docs/architecture.md."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package (or module) -> layer; a module may import only from layers <= its own, and never from itself's excluded set
LAYERS = {
    "recsys.errors": 0, "recsys.fileio": 0, "recsys.provenance": 0, "recsys.lifecycle": 0,
    "recsys.nn": 1, "recsys.models": 1,
    "recsys.data": 2, "recsys.evaluation": 2, "recsys.measure": 2, "recsys.tracking": 2,
    "recsys.export": 3, "recsys.tasks": 3,
    "recsys.compress": 4,
    "recsys.serve": 5,
    "recsys.checks": 5, "recsys.pipeline": 5, "recsys.report": 5, "recsys.sweep": 5, "recsys.sweep_space": 5,
    "recsys.sweep_tracking": 5,
}
# same-layer pairs that must not import each other either
FORBIDDEN = {("recsys.export", "recsys.tasks"), ("recsys.tasks", "recsys.export"), ("recsys.nn", "recsys.models"),
             ("recsys.models", "recsys.nn"), ("recsys.compress", "recsys.tasks")}


def _package(module: str) -> str:
    for p in sorted(LAYERS, key=len, reverse=True):
        if module == p or module.startswith(p + "."):
            return p
    raise KeyError(module)


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("recsys.")}


MODULES = sorted(p for p in (ROOT / "recsys").rglob("*.py") if p.name != "__main__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_layers(path):
    rel = path.relative_to(ROOT).with_suffix("")
    me = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
    if me == "recsys":
        return
    mine = _package(me)
    bad = [m for m in _imports(path) if LAYERS[_package(m)] > LAYERS[mine] or (mine, _package(m)) in FORBIDDEN]
    assert not bad, f"{me} (layer {LAYERS[mine]}) imports {bad}"


def test_the_rule_catches_an_upward_import(tmp_path):
    p = tmp_path / "x.py"
    p.write_text("def f():\n    from recsys.compress.prune import prune_\n")
    assert _imports(p) == {"recsys.compress.prune"}
    assert LAYERS[_package("recsys.compress.prune")] > LAYERS[_package("recsys.export.sparse")]
