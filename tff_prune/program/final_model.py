"""A finished run's model: ``final_model/`` (weights and the task's model record).

``final_model/weights.*`` is ``save_weights`` of the stripped Keras model
(tfmot wrappers removed, pruned weights exactly zero);
``final_model/model_config.json`` is the task's `model_record()`, from which
`tff_prune.export` rebuilds the model without loading any data.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_model_optimization as tfmot

from tff_prune.export.checkpoint import RECORD_FILE
from tff_prune.program.experiment_config import jsonable
from tff_prune.task import base

MODEL_DIR = "final_model"


def save_final_model(model: tf.keras.Model, weights: tff.learning.models.ModelWeights,
                     out_dir: str, task: base.FederatedTask, wrapped: bool) -> str:
    """Saves `weights` in `model` (stripped of its pruning wrappers when
    `wrapped`) and the task's model record; returns the directory."""
    path = os.path.join(out_dir, MODEL_DIR)
    os.makedirs(path, exist_ok=True)
    weights.assign_weights_to(model)
    if wrapped:
        model = tfmot.sparsity.keras.strip_pruning(model)
    model.save_weights(os.path.join(path, "weights"))
    with open(os.path.join(path, RECORD_FILE), "w") as f:
        json.dump(jsonable(task.model_record()), f, indent=2)
    return path
