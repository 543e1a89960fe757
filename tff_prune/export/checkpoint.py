"""Loading a finished run's model: ``final_model/`` weights and the task's record.

A run leaves ``EXPERIMENT_DIR/final_model/weights.*`` (``save_weights`` of the
stripped Keras model: tfmot wrappers removed, pruned weights exactly zero),
``final_model/model_config.json`` (the task's `model_record()`, with its
``task_name``; records without one are ASR's) and
``EXPERIMENT_DIR/summary.json`` (whose ``config.pruning`` says how it was
pruned). Runs without ``model_config.json`` (centralized runs) are rebuilt
from ``summary.json``'s ``config.task_name`` and ``config.task``. The caller
says how a record becomes its task's `TaskExport` (the program's task
registry, `tff_prune.program.registry.task_export`): this package never
looks a task up by name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any, Optional

import tensorflow as tf

from tff_prune.task import base

# Where `tff_prune.program.final_model` writes the task's model record.
RECORD_FILE = "model_config.json"

# A model record -> its task's serving side (e.g. the program's task registry).
TaskExportFor = Callable[[dict[str, Any]], base.TaskExport]


@dataclasses.dataclass
class SavedRun:
    """A run's model, rebuilt and restored, with its task's serving side."""

    model: tf.keras.Model
    task_export: base.TaskExport
    record: dict[str, Any]   # the task's model record the model was rebuilt from
    pruning: dict[str, Any]  # summary.json's config.pruning ({} when unknown)
    weights_prefix: str
    # summary.json's config.federated ({} when unknown, e.g. centralized runs)
    federated: dict[str, Any] = dataclasses.field(default_factory=dict)


def resolve_weights_prefix(checkpoint: str) -> str:
    """The ``.../weights`` prefix for an experiment dir, its ``final_model/`` or the prefix itself."""
    for prefix in (os.path.join(checkpoint, "final_model", "weights"),
                   os.path.join(checkpoint, "weights"), checkpoint):
        if os.path.exists(prefix + ".index"):
            return prefix
    raise FileNotFoundError(
        f"no checkpoint at {checkpoint}: expected an experiment directory, its final_model/ "
        "or a weights prefix (with a .index file)")


def _read_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_record(model_dir: str, summary: dict) -> dict[str, Any]:
    """The model record of the run whose weights are in ``model_dir``.

    ``model_config.json`` when saved; else ``{"task_name", "task"}`` from
    the summary's experiment config (the task's export rebuilds its model
    from its config; ``task_name`` only where the summary has one).
    """
    saved = _read_json(os.path.join(model_dir, RECORD_FILE))
    if saved is not None:
        return saved
    config = summary.get("config", {})
    if "task" not in config:
        raise FileNotFoundError(f"neither {model_dir}/{RECORD_FILE} nor a summary.json "
                                "with config.task: cannot tell which model was saved")
    record = {"task": config["task"]}
    if "task_name" in config:
        record["task_name"] = config["task_name"]
    return record


def locate_saved_model(checkpoint: str) -> tuple[str, dict, dict[str, Any]]:
    """(weights prefix, the run's summary or {}, model record) of a saved run
    (`FileNotFoundError` when there is no model or no record)."""
    prefix = resolve_weights_prefix(checkpoint)
    model_dir = os.path.dirname(prefix)
    summary = _read_json(os.path.join(os.path.dirname(model_dir), "summary.json")) or {}
    return prefix, summary, read_record(model_dir, summary)


def load_saved_run(checkpoint: str, task_export_for: TaskExportFor) -> SavedRun:
    """Rebuilds the model of a saved run and restores its weights.

    ``task_export_for`` turns the run's model record into its task's serving
    side (`tff_prune.program.registry.task_export`).
    """
    prefix, summary, record = locate_saved_model(checkpoint)
    export = task_export_for(record)
    model = export.build_model()
    status = model.load_weights(prefix)
    # Every variable of the rebuilt model must come from the checkpoint.
    status.assert_existing_objects_matched()
    return SavedRun(model=model, task_export=export, record=record,
                    pruning=dict(summary.get("config", {}).get("pruning", {})),
                    weights_prefix=prefix,
                    federated=dict(summary.get("config", {}).get("federated") or {}))
