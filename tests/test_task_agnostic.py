"""`tff_prune/` never names a task (its registry aside): imports, layer names, the registry."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import pathlib
import re
import types

import pytest
from absl import flags

from tff_prune.program import experiment_config
from tff_prune.program import registry
from tff_prune.task import base

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The program's task registry is the one file that names the tasks.
REGISTRY_FILE = ROOT / "tff_prune" / "program" / "registry.py"
LIBRARY_FILES = sorted(p for p in (ROOT / "tff_prune").rglob("*.py") if p != REGISTRY_FILE)
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


def _leaves(value, path=()):
    """``(field path, value)`` of every non-dataclass field of a config, depth first."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _leaves(getattr(value, field.name), path + (field.name,))
    else:
        yield path, value


@pytest.mark.parametrize("name", registry.names())
def test_every_registered_task_has_a_spec(name):
    module_name = registry.TASK_MODULES[name]
    package = module_name.rsplit(".", 1)[0] + "."  # "tasks.asr."
    spec = registry.get(name)
    assert spec is importlib.import_module(module_name).SPEC
    assert isinstance(spec, base.TaskSpec) and spec.name == name

    # Its builders, config and errors are its own task's, not another task's.
    for builder in (spec.define_flags, spec.config_from_flags, spec.build, spec.export,
                    spec.default_config):
        assert callable(builder) and builder.__module__.startswith(package), builder
    assert spec.user_errors
    for error in spec.user_errors:
        assert issubclass(error, base.DataError) and error.__module__.startswith(package), error
    assert isinstance(spec.default_client_batch_size, int) and spec.default_client_batch_size >= 1

    # The default config: a frozen, JSON-able dataclass of the task, the one a
    # run of the task gets when no config is given.
    config = spec.default_config()
    assert dataclasses.is_dataclass(config) and type(config).__dataclass_params__.frozen
    assert type(config).__module__.startswith(package)
    assert config == spec.default_config()
    json.dumps(experiment_config.jsonable(dataclasses.asdict(config)))
    assert experiment_config.ExperimentConfig(task_name=name).task == config

    # Flags round trip: every flag at its default gives the default config,
    # but for the batch size and seed the library passes (which it must use).
    spec.define_flags()
    spec.define_flags()  # guarded: a second call defines nothing twice
    defaults = types.SimpleNamespace(**{n: flags.FLAGS[n].default for n in flags.FLAGS})
    from_flags = spec.config_from_flags(defaults, batch_size=3, seed=5)
    assert type(from_flags) is type(config)
    want, got = dict(_leaves(config)), dict(_leaves(from_flags))
    assert set(want) == set(got)
    changed = {path: got[path] for path in want if got[path] != want[path]}
    assert changed and all({"batch_size": 3, "seed": 5}.get(path[-1]) == value
                           for path, value in changed.items()), changed
    assert {path[-1] for path in changed} == {"batch_size", "seed"}, changed


def test_an_unknown_task_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown task 'nope'; choose one of: asr"):
        registry.get("nope")
