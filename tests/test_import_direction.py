"""Imports run one way: the package graph read from the source (AST) against the allowed directions.

Packages, lowest first: ``tff_prune.pruning`` < ``task`` < ``model`` <
{``federated``, ``centralized``, ``export``} < ``program``; ``runtime`` and
``report`` stand alone. Tasks (``tasks/NAME/``) use the interface and the
helpers of ``pruning`` and ``export``. Entry points (``run_experiment.py``,
``tff_prune/worker.py``, any ``__main__.py``) are programs: they may import
anything and nothing imports them. Beyond the package directions, no two
files may import each other through any path (no cycles).
"""

from __future__ import annotations

import ast
import pathlib
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = ("pruning", "task", "model", "federated", "centralized", "export", "runtime",
           "report", "program")
_BELOW_MODEL = {"tff_prune.pruning", "tff_prune.task"}
# package -> the packages it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "tff_prune.pruning": set(),
    "tff_prune.task": {"tff_prune.pruning"},
    "tff_prune.model": _BELOW_MODEL,
    "tff_prune.federated": _BELOW_MODEL | {"tff_prune.model"},
    "tff_prune.centralized": _BELOW_MODEL | {"tff_prune.model"},
    "tff_prune.export": _BELOW_MODEL | {"tff_prune.model"},
    "tff_prune.runtime": set(),
    "tff_prune.report": set(),
    # The program names tasks only by string (its registry): no task import.
    "tff_prune.program": {f"tff_prune.{p}" for p in LIBRARY if p != "program"},
    "tasks.corpus_cache": set(),
    "tasks.asr": {"tff_prune.task", "tff_prune.pruning", "tff_prune.export",
                  "tasks.corpus_cache"},
    # Keyword spotting reuses the ASR task's audio front end and synthesizer.
    "tasks.kws": {"tff_prune.task", "tff_prune.pruning", "tff_prune.export",
                  "tasks.corpus_cache", "tasks.asr"},
}
ENTRY = "entry point"


def module_name(root: pathlib.Path, path: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_of(module: str) -> str:
    """The node of the package graph that ``module`` belongs to."""
    parts = module.split(".")
    if parts[-1] == "__main__" or module in ("run_experiment", "tff_prune.worker"):
        return ENTRY
    if parts[0] == "tff_prune" and len(parts) == 1:
        return "tff_prune"
    return ".".join(parts[:2])


def source_modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Every module of the library, the tasks and the top-level program."""
    paths = [p for top in ("tff_prune", "tasks") for p in (root / top).rglob("*.py")]
    paths += [p for p in root.glob("*.py")]
    return {module_name(root, p): p for p in paths}


def imports_of(path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """Our modules that ``path`` imports (anywhere in it, TYPE_CHECKING included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from a.b import c`: the module a.b.c when there is one, else a.b.
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                     else node.module for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
    modules = source_modules(root)
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def back_edges(graph: dict[str, set[str]]) -> list[str]:
    """Imports between packages that the allowed directions do not permit."""
    wrong = []
    for module, imported in sorted(graph.items()):
        source = package_of(module)
        for target in sorted(imported):
            destination = package_of(target)
            if destination == ENTRY:
                wrong.append(f"{module} -> {target} (an entry point is imported)")
            elif source in (ENTRY, destination):
                continue
            elif source not in ALLOWED:
                wrong.append(f"{module}: package {source} has no declared direction")
            elif destination not in ALLOWED[source]:
                wrong.append(f"{module} -> {target} ({source} may not import {destination})")
    return wrong


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """File-level import cycles (each reported once, from its smallest name)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_every_package_has_a_declared_direction():
    packages = {package_of(m) for m in source_modules(ROOT)} - {ENTRY, "tff_prune", "tasks"}
    assert packages == set(ALLOWED), packages ^ set(ALLOWED)


def test_imports_follow_the_allowed_directions():
    assert back_edges(import_graph(ROOT)) == []


def test_no_import_cycles_between_files():
    assert cycles(import_graph(ROOT)) == []


def _tree(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


@pytest.mark.parametrize("importer, line, why", [
    ("tff_prune/pruning/masks.py", "from tff_prune.federated import process",
     "tff_prune.pruning may not import tff_prune.federated"),
    ("tff_prune/task/base.py", "import tasks.asr.model",
     "tff_prune.task may not import tasks.asr"),
    ("tff_prune/model/wrappers.py",
     "if TYPE_CHECKING:\n    from tff_prune.program.registry import get",
     "tff_prune.model may not import tff_prune.program"),
    ("tasks/asr/model.py", "def f():\n    from tff_prune.federated import process",
     "tasks.asr may not import tff_prune.federated"),
    ("tff_prune/federated/process.py", "import run_experiment", "an entry point is imported"),
])
def test_a_back_edge_is_found(tmp_path, importer, line, why):
    files = {"tff_prune/__init__.py": "", "tff_prune/pruning/masks.py": "",
             "tff_prune/task/base.py": "", "tff_prune/model/wrappers.py": "",
             "tff_prune/federated/process.py": "from tff_prune.model import wrappers\n",
             "tff_prune/program/registry.py": "", "tasks/asr/model.py": "",
             "run_experiment.py": "from tff_prune.program import registry\n"}
    files[importer] = files[importer] + line + "\n"
    graph = import_graph(_tree(tmp_path, files))
    wrong = back_edges(graph)
    assert len(wrong) == 1 and why in wrong[0], wrong


def test_a_cycle_is_found(tmp_path):
    graph = import_graph(_tree(tmp_path, {
        "tff_prune/__init__.py": "",
        "tff_prune/report/runs.py": "from tff_prune.report import plots\n",
        "tff_prune/report/plots.py": "from tff_prune.report.runs import Experiment\n"}))
    assert back_edges(graph) == []
    assert cycles(graph) == [["tff_prune.report.plots", "tff_prune.report.runs",
                              "tff_prune.report.plots"]]
