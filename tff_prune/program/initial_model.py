"""`--initial_model`: a federated run that starts from a saved model's weights.

A seed model (Pelikan et al., arXiv 2310.00098: federated ASR started from a
centrally trained model closes most of the gap to centralized training) is
any finished run's ``final_model/``, centralized or federated, of the same
task and architecture. Everything is checked before the run changes
anything on disk; a path that holds no saved model, another task's model or
another architecture is one line naming the mismatch.
"""

from __future__ import annotations

import re

import tensorflow as tf

from tff_prune.export import checkpoint
from tff_prune.program import registry
from tff_prune.pruning import config as config_lib
from tff_prune.task import base


# TensorFlow's restore error for a weight saved with another shape.
_SHAPE_ERROR = re.compile(r"incompatible tensor with shape (\S+) when attempting to restore "
                          r"variable with shape (\S+)")


def _mismatch(path: str, what: str) -> config_lib.ConfigError:
    return config_lib.ConfigError(f"--initial_model={path} {what}")


def _record_difference(saved: dict, ours: dict) -> str:
    """Where the saved model's record differs from this run's (a hint)."""
    saved_model, our_model = saved.get("model", {}), ours.get("model", {})
    keys = sorted(k for k in set(saved_model) | set(our_model)
                  if saved_model.get(k) != our_model.get(k))
    if not keys:
        return ""
    return "; its model record: " + ", ".join(
        f"{k} {saved_model.get(k)!r} there, {our_model.get(k)!r} here" for k in keys[:4])


def load_initial_model(path: str, task_name: str, task: base.FederatedTask) -> tf.keras.Model:
    """`task`'s model (unwrapped) holding the weights saved at `path` (a run's
    folder, its ``final_model/`` or a weights prefix).

    Raises `ConfigError` (one line) when `path` holds no saved model, or one
    of another task or architecture than `task`'s.
    """
    try:
        prefix = checkpoint.resolve_weights_prefix(path)
    except FileNotFoundError:
        raise _mismatch(path, "holds no saved model: expected a run's folder, its "
                              "final_model/ or a weights prefix") from None
    try:
        _, _, record = checkpoint.locate_saved_model(path)
    except FileNotFoundError:
        raise _mismatch(path, "has no model record (model_config.json or the run's "
                              "summary.json): cannot tell which model it is") from None
    # Records that name no task predate the registry (`registry.task_export`).
    saved_task = record.get("task_name", registry.DEFAULT_TASK)
    if saved_task != task_name:
        raise _mismatch(path, f"is a {saved_task!r} model; this run trains {task_name!r}")
    model = task.build_model()
    saved = [k for k in tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
             if k.endswith("/.ATTRIBUTES/VARIABLE_VALUE") and "OPTIMIZER" not in k]
    detail = None
    if len(saved) != len(model.weights):
        detail = f"{len(saved)} weights there, {len(model.weights)} here"
    else:
        try:
            # Every weight of this model from the file (and, counted above,
            # nothing more in it).
            model.load_weights(prefix).assert_existing_objects_matched()
        except (ValueError, AssertionError, tf.errors.OpError) as e:
            shape = _SHAPE_ERROR.search(str(e))
            detail = (f"a weight of shape {shape.group(1)} there is {shape.group(2)} here"
                      if shape else "its weights are not this model's")
    if detail is not None:
        raise _mismatch(path, f"does not fit this run's model ({detail}"
                              f"{_record_difference(record, task.model_record())})")
    return model
