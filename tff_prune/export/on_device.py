"""The on-device training artifact: a TFLite model a phone runs for each local step.

TensorFlow's on-device training recipe (a `tf.Module` whose signatures
train, infer, save and restore, converted with resource variables and
TFLite's select TF ops) around the exported model, usually the compact one:

``train``
    the task's batch (`tff_prune.task.base.OnDeviceTraining.train_inputs`)
    -> ``loss``: one step of the client's masked local step
    (`tff_prune.model.local_step.masked_step`, the very function federated
    clients run) with the run's client optimizer, its state kept in the
    artifact's variables.
``infer``
    the task's model inputs -> its outputs (e.g. ASR logits).
``save`` / ``restore``
    ``checkpoint_path`` (a file path) -> ``checkpoint_path``: every weight
    and the optimizer's state, written or read back (`tf.raw_ops.Save` /
    ``Restore``).

Masks: the exported model holds a pruned model's zeros. Where a kernel of a
prunable layer still holds exact zeros (pruned weights that compaction
could not cut out, or every pruned weight of a masked model), the artifact
masks that kernel (and, for schemes that remove whole units, the bias of a
unit whose kernel column is all zero), as the client's wrappers would;
kernels without zeros are trained unmasked (a trained weight is never
exactly zero). A dense model has no masks.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from tff_prune.model import local_step
from tff_prune.model import wrappers
from tff_prune.task import base

TRAIN_TFLITE_FILE = os.path.join("assets.extra", "train.tflite")
SIGNATURES = ("train", "infer", "save", "restore")
CHECKPOINT_PATH = "checkpoint_path"


def zero_masks(model: tf.keras.Model, mask_biases: bool) -> list[Optional[tf.Tensor]]:
    """Per trainable weight of `model`: its mask, or None when never masked.

    A kernel of a prunable layer (`wrappers.select_prunable_layers`) with
    exact zeros is masked where it is zero (a mask that broadcasts to the
    kernel: a vector where whole columns or rows are zero); with
    `mask_biases`, its bias is masked on the units whose kernel is all zero
    (`wrappers.bias_mask_from_kernel_mask`, as the clients derive it).
    """
    masks: dict[int, tf.Tensor] = {}
    trainable = model.trainable_weights
    position = {id(v): i for i, v in enumerate(trainable)}
    for name in wrappers.select_prunable_layers(model):
        layer = model.get_layer(name)
        attribute = wrappers.kernel_attribute(layer)
        kernel = getattr(layer, attribute)
        value = kernel.numpy()
        if np.all(value != 0):
            continue
        mask = tf.constant(_smallest_broadcast((value != 0).astype(np.float32)))
        masks[position[id(kernel)]] = mask
        bias = getattr(layer, "bias", None)
        if mask_biases and bias is not None:
            masks[position[id(bias)]] = wrappers.bias_mask_from_kernel_mask(
                mask, attribute == "depthwise_kernel")
    return [masks.get(i) for i in range(len(trainable))]


def _smallest_broadcast(mask: np.ndarray) -> np.ndarray:
    """`mask` as its output-unit vector ([1, ..., 1, out]) or input-unit vector
    ([..., in, 1]) where it is one broadcast (whole columns or rows pruned: a
    structured model's zeros), else as is: the artifact stores and multiplies
    the smaller tensor."""
    columns = mask.max(axis=tuple(range(mask.ndim - 1)), keepdims=True)
    if np.array_equal(np.broadcast_to(columns, mask.shape), mask):
        return columns
    rows = mask.max(axis=-1, keepdims=True)
    if np.array_equal(np.broadcast_to(rows, mask.shape), mask):
        return rows
    return mask


def _named_specs(specs: Mapping[str, tf.TensorSpec]) -> dict[str, tf.TensorSpec]:
    # A signature's input names are its specs' names.
    return {name: tf.TensorSpec(spec.shape, spec.dtype, name=name)
            for name, spec in specs.items()}


def build_module(model: tf.keras.Model, training: base.OnDeviceTraining, optimizer: Any,
                 masks: Sequence[Optional[tf.Tensor]]) -> tuple[tf.Module, dict[str, Any]]:
    """The artifact's `tf.Module` and its signatures {name: tf.function}.

    `optimizer`: a `tff.learning.optimizers.Optimizer` (its state starts at
    `initialize`); `masks`: per trainable weight (`zero_masks`). Only
    variables are tracked (not the Keras model): the SavedModel holds the
    four functions alone.
    """
    module = tf.Module()
    trainable = list(model.trainable_weights)
    module.model_variables = list(model.variables)
    state = optimizer.initialize(tuple(tf.TensorSpec(v.shape, v.dtype) for v in trainable))
    module.optimizer_variables = tf.nest.map_structure(tf.Variable, state)
    saved = ([(f"model/{i}", v) for i, v in enumerate(module.model_variables)]
             + [(f"optimizer/{i}", v)
                for i, v in enumerate(tf.nest.flatten(module.optimizer_variables))])
    path_spec = tf.TensorSpec([], tf.string, name=CHECKPOINT_PATH)

    @tf.function(input_signature=[_named_specs(training.train_inputs)])
    def train(inputs):
        current = tf.nest.map_structure(lambda v: v.read_value(), module.optimizer_variables)
        new_state, loss, _, _ = local_step.masked_step(
            trainable, masks, optimizer, current, lambda: training.loss(model, inputs))
        tf.nest.map_structure(lambda v, t: v.assign(t), module.optimizer_variables, new_state)
        return {"loss": loss}

    @tf.function(input_signature=[_named_specs(training.infer_inputs)])
    def infer(inputs):
        return dict(training.infer(model, inputs))

    @tf.function(input_signature=[path_spec])
    def save(checkpoint_path):
        tf.raw_ops.Save(filename=checkpoint_path, tensor_names=[name for name, _ in saved],
                        data=[v.read_value() for _, v in saved])
        return {CHECKPOINT_PATH: checkpoint_path}

    @tf.function(input_signature=[path_spec])
    def restore(checkpoint_path):
        for name, variable in saved:
            variable.assign(tf.reshape(tf.raw_ops.Restore(
                file_pattern=checkpoint_path, tensor_name=name, dt=variable.dtype),
                variable.shape))
        return {CHECKPOINT_PATH: checkpoint_path}

    module.train, module.infer, module.save, module.restore = train, infer, save, restore
    return module, {"train": train, "infer": infer, "save": save, "restore": restore}


def convert(model: tf.keras.Model, training: base.OnDeviceTraining, optimizer: Any,
            masks: Sequence[Optional[tf.Tensor]], work_dir: Optional[str] = None) -> bytes:
    """The artifact as a TFLite flatbuffer (TFLite builtins + select TF ops,
    resource variables); see `build_module`. The SavedModel it is converted
    from lives in a temporary folder inside `work_dir` (None: the system's)."""
    module, signatures = build_module(model, training, optimizer, masks)
    with tempfile.TemporaryDirectory(prefix=".on_device_", dir=work_dir) as path:
        tf.saved_model.save(module, path, signatures={
            name: fn.get_concrete_function() for name, fn in signatures.items()})
        converter = tf.lite.TFLiteConverter.from_saved_model(path, signature_keys=SIGNATURES)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                               tf.lite.OpsSet.SELECT_TF_OPS]
        converter.experimental_enable_resource_variables = True
        return converter.convert()


def optimizer_hparams(optimizer: Any) -> dict[str, float]:
    """The optimizer's hyperparameters by name (what the artifact trains with)."""
    return {name: float(value)
            for name, value in local_step.optimizer_hparams(optimizer).items()}


def select_tf_ops(content: bytes) -> list[str]:
    """The select TF ops (``Flex*`` custom ops) a converted model needs, sorted."""
    return sorted({m.decode("ascii")[len("Flex"):]
                   for m in re.findall(rb"Flex[A-Z][A-Za-z0-9]+", content)})
