"""Pruned models without training: magnitude masks applied in place (tests, bench).

A finished run's checkpoint already holds its masked weights (exact zeros);
this module makes such a model from any Keras model, with the same mask
code the federated server uses (`MaskDecider`, one mask decision at the
target sparsity), so export, compaction and TFLite can be checked and
measured without a training run.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from tff_prune.model import mask_policy
from tff_prune.model import wrappers
from tff_prune.pruning import config as config_lib
from tff_prune.task import base


def apply_magnitude_masks(model: tf.keras.Model, scheme: str, sparsity: float,
                          structure: str = "column",
                          model_structure: Optional[base.ModelStructure] = None,
                          exclude_layers: str = "",
                          ) -> dict[str, np.ndarray]:
    """Zeroes ``model``'s smallest units in place, as a finished run would have.

    Masks come from `MaskDecider.from_scores` on |weight| (magnitude
    importance, uniform allocation) over every wrappable layer that
    ``exclude_layers`` (a regex, as `--exclude_layers`) does not match: pass
    the task's `excluded_layers` for the masks a run would decide. For
    structured schemes whose removed units lose their bias
    (`PruningConfig.masks_biases`), the bias of every fully pruned output unit
    is zeroed too. ``model_structure`` is the task's (which slices are pruned
    together); without it every column / row is its own unit and ``head`` /
    ``channel`` structures find nothing to prune. Returns the kernel masks by
    'layer/kernel' key.
    """
    pruning = config_lib.PruningConfig(scheme=scheme, structure=structure)
    wrapped = wrappers.wrap_for_pruning(model, wrappers.select_prunable_layers(model, exclude_layers))
    index = wrappers.index_prunable_weights(wrapped)
    decider = mask_policy.MaskDecider(pruning, index,
                                       model_structure or base.ModelStructure())
    kernels = [_variable(model, k) for k in index.keys]
    coupled = {}
    if pruning.masks_biases:
        # Bias magnitudes take part in unit scores, as in the server finalizer.
        coupled = {k: tf.abs(_variable(model, k)) for k in index.bias_keys if k is not None}
    masks = decider.from_scores([tf.abs(k) for k in kernels], sparsity, coupled or None)
    # The same per-weight masks (kernels, and biases of removed units) as training.
    non_trainable = [v.read_value() for v in wrapped.non_trainable_weights]
    for pos, mask in zip(index.mask_index, masks):
        non_trainable[pos] = mask
    per_weight = wrappers.weight_masks(non_trainable, index, len(index.trainable_keys),
                                       pruning.masks_biases)
    masked = [(_variable(model, key), m)
              for key, m in zip(index.trainable_keys, per_weight) if m is not None]
    variables = [v for v, _ in masked]
    for variable, value in zip(variables, wrappers.apply_weight_masks(
            variables, [m for _, m in masked])):
        variable.assign(value)
    return {key: mask.numpy() for key, mask in zip(index.keys, masks)}


def _variable(model: tf.keras.Model, key: str) -> tf.Variable:
    """The variable of an unwrapped `model` named by a 'layer/weight' key."""
    layer, attr = key.rsplit("/", 1)
    return getattr(model.get_layer(layer), attr)


def randomize_non_kernel_weights(model: tf.keras.Model, seed: int = 0, scale: float = 0.1) -> None:
    """Gives biases and LayerNorm offsets/scales random values, in place.

    Keras initializes biases and LayerNorm betas to 0 and gammas to 1, which
    would make "bias is zero" trivially true in an untrained model; tests of
    compaction use this so that only pruning makes a bias zero.
    """
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        name = variable.name.split("/")[-1].split(":")[0]
        noise = rng.normal(0.0, scale, variable.shape).astype(np.float32)
        if name in ("bias", "beta"):
            variable.assign(noise)
        elif name == "gamma":
            variable.assign(1.0 + noise)
