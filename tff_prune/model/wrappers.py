"""tfmot pruning wrappers on a task's Keras model, driven by our processes.

Each prunable layer is wrapped in tfmot's pruning wrapper so that its mask
lives where tfmot keeps it (the wrapper's non-trainable `mask` variable, hence
in `ModelWeights.non_trainable`, broadcast with the weights) and
`strip_pruning` works at export. The wrappers never decide masks themselves:
their schedule, `ServerDrivenSchedule`, never asks for a mask update, because
masks are computed by the server (or by client votes) and written into the
wrappers by our TFF computations; the server keeps the round in the wrappers'
`pruning_step`. Clients re-apply masks after every optimizer step, since TFF
never calls tfmot's Keras callbacks.

The wrapper is `ServerMaskedPruneLowMagnitude`, tfmot's `PruneLowMagnitude`
without the per-step schedule machinery: that machinery can never update a
mask here, yet it put a `tf.cond` with a top-k mask computation per layer
into every traced computation (about a third of tracing and of a round's time
on the micro model).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Optional

import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_schedule
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

from tff_prune.pruning import masks as masks_lib

# DepthwiseConv2D is in tfmot's registry, but tfmot 0.7.5's wrapper creates no
# mask for its `depthwise_kernel`; it is tiny (k x C) and stays dense. Channel
# pruning still removes whole channels through the pointwise kernels around it.
PRUNABLE_LAYER_TYPES = (tf.keras.layers.Dense, tf.keras.layers.Conv2D)
_WRAPPER_PREFIX = "prune_low_magnitude_"


class ServerDrivenSchedule(pruning_schedule.PruningSchedule):
    """A tfmot schedule that never updates masks: the server decides them."""

    def __call__(self, step):
        return tf.constant(False), tf.constant(0.0, tf.float32)

    def get_config(self):
        return {"class_name": self.__class__.__name__, "config": {}}


class ServerMaskedPruneLowMagnitude(pruning_wrapper.PruneLowMagnitude):
    """tfmot's pruning wrapper whose masks are written from outside.

    Keeps what the rest of tfmot relies on: the `mask`, `threshold` and
    `pruning_step` variables, `weights = weights * mask` on every call, the
    layer name prefix and `strip_pruning`. Drops what only a tfmot schedule
    uses: the per-step `pruning_step` increment and its conditional mask
    update (with `ServerDrivenSchedule` a graph that never runs a branch).
    """

    def __init__(self, layer: tf.keras.layers.Layer, **kwargs):
        super().__init__(layer, **kwargs)
        # tfmot names a wrapper after its class; keep tfmot's own name (before
        # build, hence before any variable is named after it), which is what
        # checkpoints, `weight_key` and the exporters know.
        self._name = _WRAPPER_PREFIX + layer.name

    def call(self, inputs, training=None, **kwargs):
        self.add_update(self.pruning_obj.weight_mask_op())
        if "training" in inspect.getfullargspec(self.layer.call).args:
            return self.layer.call(inputs, training=training, **kwargs)
        return self.layer.call(inputs, **kwargs)


# Called with (model_fn, a model it just built), before any trace: the one
# window in which that eagerly built model can still be called (Keras
# refuses once a model was built inside TFF's `tf.compat.v1.Graph`).
OnModelBuilt = Callable[[Callable[[], tf.keras.Model], tf.keras.Model], None]


def kernel_attribute(layer: tf.keras.layers.Layer) -> str:
    """Name of the weight tfmot masks in `layer` ('kernel' or 'depthwise_kernel')."""
    if isinstance(layer, tf.keras.layers.DepthwiseConv2D):
        return "depthwise_kernel"
    return "kernel"


def weight_key(variable: tf.Variable) -> str:
    """'layer/var' key of a model variable, wrapper prefix and ':0' removed."""
    name = variable.name.split(":")[0]
    return name[len(_WRAPPER_PREFIX):] if name.startswith(_WRAPPER_PREFIX) else name


def select_prunable_layers(model: tf.keras.Model, exclude_layers: str = "") -> list[str]:
    """Names of the model's wrappable layers that `exclude_layers` doesn't match."""
    try:
        pattern = re.compile(exclude_layers) if exclude_layers else None
    except re.error as e:
        raise ValueError(f"--exclude_layers is not a valid regex: {e}") from None
    return [layer.name for layer in model.layers
            if isinstance(layer, PRUNABLE_LAYER_TYPES)
            and not (pattern and pattern.search(layer.name))]


def wrap_for_pruning(model: tf.keras.Model, prunable_layers: Sequence[str]
                     ) -> tf.keras.Model:
    """Clone of `model` with each named layer inside a tfmot pruning wrapper.

    The clone is built with fresh weights; callers copy weights as needed.
    """
    names = set(prunable_layers)

    def clone(layer):
        if layer.name in names:
            return ServerMaskedPruneLowMagnitude(
                layer.__class__.from_config(layer.get_config()),
                pruning_schedule=ServerDrivenSchedule())
        return layer.__class__.from_config(layer.get_config())

    with tfmot.sparsity.keras.prune_scope():
        return tf.keras.models.clone_model(model, clone_function=clone)


def assign_unwrapped_weights(wrapped: tf.keras.Model, source: tf.keras.Model) -> None:
    """Sets the weights of `wrapped` (a `wrap_for_pruning` clone) to those
    of `source`, the same model unwrapped; masks and pruning steps stay."""
    inner = [layer.layer if isinstance(layer, ServerMaskedPruneLowMagnitude) else layer
             for layer in wrapped.layers]
    if [layer.name for layer in inner] != [layer.name for layer in source.layers]:
        raise ValueError("the models have different layers")
    for target, layer in zip(inner, source.layers):
        if layer.weights:
            target.set_weights(layer.get_weights())


@dataclasses.dataclass(frozen=True)
class PrunableWeightIndex:
    """Where each prunable kernel, its bias and its mask sit in ModelWeights.

    `trainable` / `non_trainable` positions index the lists of
    `tff.learning.models.ModelWeights.from_model(wrapped_model)`.
    """

    keys: tuple[str, ...]                 # 'layer/kernel' per prunable kernel
    kernel_index: tuple[int, ...]         # into ModelWeights.trainable
    bias_index: tuple[Optional[int], ...]  # into ModelWeights.trainable
    mask_index: tuple[int, ...]           # into ModelWeights.non_trainable
    step_index: tuple[int, ...]           # pruning_step, into non_trainable
    shapes: tuple[tuple[int, ...], ...]
    depthwise: tuple[bool, ...]           # kernel is [kh, kw, channels, 1]
    trainable_keys: tuple[str, ...]       # key of every trainable weight
    trainable_shapes: tuple[tuple[int, ...], ...]

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """{key: shape} of every trainable weight (for unit structures)."""
        return dict(zip(self.trainable_keys, self.trainable_shapes))

    @property
    def bias_keys(self) -> tuple[Optional[str], ...]:
        return tuple(None if i is None else self.trainable_keys[i]
                     for i in self.bias_index)


def index_prunable_weights(wrapped: tf.keras.Model) -> PrunableWeightIndex:
    """Maps the wrapped model's prunable kernels to ModelWeights positions."""
    trainable_keys = [weight_key(v) for v in wrapped.trainable_weights]
    trainable_pos = {k: i for i, k in enumerate(trainable_keys)}
    non_trainable_pos = {v.name.split(":")[0]: i
                         for i, v in enumerate(wrapped.non_trainable_weights)}
    keys, kernels, biases, masks, steps, shapes, depthwise = ([] for _ in range(7))
    for layer in wrapped.layers:
        if not isinstance(layer, pruning_wrapper.PruneLowMagnitude):
            continue
        inner = layer.layer
        attr = kernel_attribute(inner)
        key = f"{inner.name}/{attr}"
        keys.append(key)
        kernels.append(trainable_pos[key])
        biases.append(trainable_pos.get(f"{inner.name}/bias"))
        masks.append(non_trainable_pos[f"{layer.name}/mask"])
        steps.append(non_trainable_pos[f"{layer.name}/pruning_step"])
        shapes.append(tuple(getattr(inner, attr).shape.as_list()))
        depthwise.append(isinstance(inner, tf.keras.layers.DepthwiseConv2D))
    return PrunableWeightIndex(
        keys=tuple(keys), kernel_index=tuple(kernels), bias_index=tuple(biases),
        mask_index=tuple(masks), step_index=tuple(steps), shapes=tuple(shapes),
        depthwise=tuple(depthwise), trainable_keys=tuple(trainable_keys),
        trainable_shapes=tuple(tuple(v.shape.as_list())
                               for v in wrapped.trainable_weights))


def bias_mask_from_kernel_mask(kernel_mask: tf.Tensor, depthwise: bool) -> tf.Tensor:
    """1 for each output unit that keeps any incoming weight, else 0.

    Output units are the kernel's last axis for Dense/Conv2D ([..., out]) and
    axis 2 for DepthwiseConv2D ([kh, kw, channels, multiplier=1]); a unit whose
    incoming weights are all pruned loses its bias too, so that structured
    pruning removes whole units (and the model can be compacted).
    """
    rank = kernel_mask.shape.rank
    if depthwise:
        return tf.reduce_max(kernel_mask, axis=[0, 1, 3])
    return tf.reduce_max(kernel_mask, axis=list(range(rank - 1)))


def weight_masks(non_trainable: Sequence[tf.Tensor], index: PrunableWeightIndex,
                 num_trainable: int, mask_biases: bool) -> list[Optional[tf.Tensor]]:
    """Mask per trainable weight (None = never masked), from wrapper masks."""
    masks: list[Optional[tf.Tensor]] = [None] * num_trainable
    for k, kernel_pos in enumerate(index.kernel_index):
        kernel_mask = non_trainable[index.mask_index[k]]
        masks[kernel_pos] = kernel_mask
        bias_pos = index.bias_index[k]
        if mask_biases and bias_pos is not None:
            masks[bias_pos] = bias_mask_from_kernel_mask(kernel_mask, index.depthwise[k])
    return masks


def apply_weight_masks(values: Sequence[tf.Tensor],
                       masks: Sequence[Optional[tf.Tensor]]) -> list[tf.Tensor]:
    """`values` with pruned coordinates set to exactly zero (mask None: as is).

    The list form of `pruning.masks.mask_weight`, for ModelWeights positions.
    """
    return [v if m is None else masks_lib.mask_weight(v, m) for v, m in zip(values, masks)]


def where_kept(kept: Sequence[tf.Tensor], pruned: Sequence[tf.Tensor],
               masks: Sequence[Optional[tf.Tensor]]) -> list[tf.Tensor]:
    """`kept` where the mask keeps a coordinate, `pruned` where it prunes it
    (mask None: `kept`); how a dense copy keeps the values of pruned weights."""
    return [k if m is None else tf.where(m > 0, k, p) for k, p, m in zip(kept, pruned, masks)]


def model_weights_type(model: tf.keras.Model) -> tff.types.Type:
    """TFF type of `tff.learning.models.ModelWeights.from_model(model)`."""
    return tff_type(tff.learning.models.ModelWeights.from_model(model))


def tff_type(structure) -> tff.types.Type:
    """TFF type of a structure of `tf.TensorSpec`s, tensors or variables."""
    return tff.types.to_type(tf.nest.map_structure(
        lambda v: tff.TensorType(v.dtype.as_numpy_dtype, v.shape.as_list()), structure))


def as_nest(value):
    """A value TFF passes in as `tff.structure.Struct` (unnamed containers),
    as the Python nest `tf.nest` works on; other values as they are."""
    if isinstance(value, tff.structure.Struct):
        return tff.structure.to_odict_or_tuple(value)
    return value
