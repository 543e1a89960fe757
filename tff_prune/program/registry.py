"""Tasks by name (`--task=NAME`): each entry is a module exposing `SPEC`.

The one place in `tff_prune` that names the tasks: it sits at the program
level, above the library packages (which know tasks only through the
interface, `tff_prune.task.base`). Modules are imported on first use, so a
task's heavy imports (audio decoders, a speech synthesizer) load only when
it runs.
"""

from __future__ import annotations

import importlib

from typing import Any

from tff_prune.task import base

# name -> module whose `SPEC` is the task's `base.TaskSpec`.
TASK_MODULES = {
    "asr": "tasks.asr.spec",
    "kws": "tasks.kws.spec",
}
DEFAULT_TASK = "asr"


def names() -> tuple[str, ...]:
    """Registered task names, the default first."""
    return (DEFAULT_TASK,) + tuple(sorted(n for n in TASK_MODULES if n != DEFAULT_TASK))


def get(name: str) -> base.TaskSpec:
    """The registered task `name`; ValueError naming the choices otherwise."""
    if name not in TASK_MODULES:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(names())}")
    spec = importlib.import_module(TASK_MODULES[name]).SPEC
    if not isinstance(spec, base.TaskSpec) or spec.name != name:
        raise TypeError(f"{TASK_MODULES[name]}.SPEC is not the TaskSpec of {name!r}")
    return spec


def define_all_flags() -> None:
    """Declares every registered task's flags (absl needs them before parsing)."""
    for name in names():
        get(name).define_flags()


def task_export(record: dict[str, Any]) -> base.TaskExport:
    """The registered task's serving side for a run's model ``record``.

    Records that name no task predate the registry: they are the default
    task's.
    """
    return get(record.get("task_name", DEFAULT_TASK)).export(record)
