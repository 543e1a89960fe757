"""`tff_prune/` never names a task: imports, layer names, the registry."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

from tasks import base
from tasks import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY_FILES = sorted((ROOT / "tff_prune").rglob("*.py"))
TASK_PACKAGES = tuple(f"tasks.{name}" for name in registry.TASK_MODULES)


def _imported_modules(path: pathlib.Path) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return modules


def test_library_imports_no_task():
    offenders = [f"{path.relative_to(ROOT)}: {module}"
                 for path in LIBRARY_FILES for module in _imported_modules(path)
                 if module.startswith(TASK_PACKAGES)]
    # Strings too: an importlib call naming a task would hide from the AST.
    offenders += [f"{path.relative_to(ROOT)}: {package}" for path in LIBRARY_FILES
                  for package in TASK_PACKAGES if package in path.read_text()]
    assert not offenders


def _conformer_layer_names() -> set[str]:
    """The Conformer's layer names, with and without their block prefix."""
    from tasks.asr import model as model_lib  # pylint: disable=import-outside-toplevel
    model = model_lib.build_conformer_ctc(model_lib.ConformerConfig.micro(), 30)
    names = set()
    for layer in model.layers:
        if layer.weights:
            names.add(layer.name)
            names.add(re.sub(r"^block\d+_", "", layer.name))
    return names


def test_no_conformer_layer_name_in_the_library():
    names = _conformer_layer_names()
    assert {"ff1_in", "mhsa_query", "subsample_conv1", "ctc_output"} <= names
    found = [f"{path.relative_to(ROOT)}: {name}" for path in LIBRARY_FILES
             for name in sorted(names)
             if re.search(rf"\b{re.escape(name)}\b", path.read_text())]
    assert not found


@pytest.mark.parametrize("name", registry.names())
def test_every_registered_task_has_a_spec(name):
    spec = registry.get(name)
    assert isinstance(spec, base.TaskSpec) and spec.name == name
    assert spec.default_config is not None


def test_an_unknown_task_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown task 'nope'; choose one of: asr"):
        registry.get("nope")
