"""Loading a finished run's model: ``final_model/`` weights and configs.

A run leaves ``EXPERIMENT_DIR/final_model/weights.*`` (``save_weights`` of the
stripped Keras model: tfmot wrappers removed, pruned weights exactly zero),
``final_model/model_config.json`` (``{"model": ConformerConfig fields,
"task": AsrTaskConfig fields}``) and ``EXPERIMENT_DIR/summary.json`` (whose
``config.pruning`` says how it was pruned). Runs without
``model_config.json`` (centralized runs) are rebuilt from
``summary.json``'s ``config.task``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import tensorflow as tf

from tasks.asr import features as features_lib
from tasks.asr import model as model_lib
from tasks.asr import text
from tasks.asr import task as task_lib


@dataclasses.dataclass
class SavedRun:
    """A run's model, rebuilt and restored."""

    model: tf.keras.Model
    model_config: model_lib.ConformerConfig
    feature_config: features_lib.FeatureConfig
    pruning: dict[str, Any]  # summary.json's config.pruning ({} when unknown)
    weights_prefix: str


def _fields(cls, values: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


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


def load_saved_run(checkpoint: str) -> SavedRun:
    """Rebuilds the model of a saved run and restores its weights."""
    prefix = resolve_weights_prefix(checkpoint)
    model_dir = os.path.dirname(prefix)
    summary = _read_json(os.path.join(os.path.dirname(model_dir), "summary.json")) or {}
    saved = _read_json(os.path.join(model_dir, "model_config.json"))
    if saved is not None:
        model_config = model_lib.ConformerConfig(**_fields(model_lib.ConformerConfig, saved["model"]))
        task = saved.get("task", {})
    elif "task" in summary.get("config", {}):
        task = summary["config"]["task"]
        model_config = task_lib.AsrTaskConfig(
            model_size=task["model_size"], dropout=task.get("dropout", 0.1),
            feature=features_lib.FeatureConfig(
                **_fields(features_lib.FeatureConfig, task.get("feature", {})))).model_config()
    else:
        raise FileNotFoundError(f"neither {model_dir}/model_config.json nor a summary.json "
                                "with config.task: cannot tell which model was saved")
    feature_config = features_lib.FeatureConfig(
        **_fields(features_lib.FeatureConfig, task.get("feature", {})))
    model = model_lib.build_conformer_ctc(model_config, text.VOCAB_SIZE)
    status = model.load_weights(prefix)
    # Every variable of the rebuilt model must come from the checkpoint.
    status.assert_existing_objects_matched()
    return SavedRun(model=model, model_config=model_config, feature_config=feature_config,
                    pruning=dict(summary.get("config", {}).get("pruning", {})),
                    weights_prefix=prefix)
