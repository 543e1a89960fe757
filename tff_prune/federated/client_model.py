"""The model a client receives, in the form it crosses the wire.

The server's `ModelWeights` hold dense weights and float32 masks (the tfmot
wrappers' variables), twice a model's size. A client needs neither the
float masks nor, unless it scores pruned weights, their dense values:

* ``trainable``: the weights, masked (pruned coordinates exactly zero) unless
  the method needs the dense values on the client (Taylor importance scores
  a pruned weight at its dense value; `client_vote` may vote one back). With
  ``kept_counts`` (sparse form) each masked kernel travels as its kept values
  only, in row-major order, a vector whose length (its mask's count of ones)
  is part of the type; the client puts them back where its mask has ones;
* ``masks``: each wrapper mask bit-packed (`pruning.bitpack`), 1/32 of it;
* ``round``: the round the client trains (the wrappers' `pruning_step`),
  sent once instead of once per wrapper;
* ``other``: any other non-trainable weight (tfmot's unused per-layer
  ``threshold`` scalars), as is.

`to_wire` runs on the server, `from_wire` on the client; together they give
the client exactly the `ModelWeights` it would have received whole, except
that pruned coordinates are zero when ``dense_values`` is off (clients mask
them before training in either case).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any, Optional

import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.model import wrappers
from tff_prune.pruning import bitpack


def other_positions(index: wrappers.PrunableWeightIndex, num_non_trainable: int
                    ) -> tuple[int, ...]:
    """Non-trainable positions that hold neither a mask nor a pruning step."""
    special = set(index.mask_index) | set(index.step_index)
    return tuple(i for i in range(num_non_trainable) if i not in special)


def kept_values(value: tf.Tensor, mask: tf.Tensor, count: int) -> tf.Tensor:
    """The entries of `value` where `mask` keeps them, row-major, as a
    vector of the static length `count` (the mask's number of ones)."""
    return tf.reshape(tf.gather_nd(value, tf.where(mask > 0)), [count])


def from_kept_values(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """The tensor of `mask`'s shape holding `values` where `mask` keeps
    entries (row-major) and exact zeros elsewhere; inverse of `kept_values`."""
    return tf.scatter_nd(tf.where(mask > 0), values,
                         tf.constant([int(d) for d in mask.shape], tf.int64))


def sparse_kernels(trainable: list, index: wrappers.PrunableWeightIndex, kernel_masks: list,
                   kept_counts: Sequence[int]) -> list:
    """`trainable` with each masked kernel replaced by its kept values."""
    trainable = list(trainable)
    for pos, mask, count in zip(index.kernel_index, kernel_masks, kept_counts):
        trainable[pos] = kept_values(trainable[pos], mask, count)
    return trainable


def to_wire(weights: tff.learning.models.ModelWeights,
            index: wrappers.PrunableWeightIndex, mask_biases: bool,
            dense_values: bool, kept_counts: Optional[Sequence[int]] = None
            ) -> collections.OrderedDict:
    """What the server broadcasts for `weights` (see module docstring);
    `kept_counts`, one per masked kernel, selects the sparse form."""
    trainable = list(weights.trainable)
    non_trainable = list(weights.non_trainable)
    if not dense_values:
        masks = wrappers.weight_masks(non_trainable, index, len(trainable), mask_biases)
        trainable = wrappers.apply_weight_masks(trainable, masks)
    if kept_counts is not None:
        if dense_values:
            raise ValueError("the sparse form sends no pruned values")
        trainable = sparse_kernels(trainable, index,
                                   [non_trainable[i] for i in index.mask_index], kept_counts)
    round_num = (tf.cast(non_trainable[index.step_index[0]], tf.int64)
                 if index.step_index else tf.constant(0, tf.int64))
    return collections.OrderedDict(
        trainable=tuple(trainable),
        masks=tuple(bitpack.pack_mask(non_trainable[i]) for i in index.mask_index),
        round=round_num,
        other=tuple(non_trainable[i] for i in other_positions(index, len(non_trainable))))


def from_wire(value: Any, index: wrappers.PrunableWeightIndex,
              weights_type: tff.types.Type, sparse: bool = False
              ) -> tff.learning.models.ModelWeights:
    """The client's `ModelWeights` (of `weights_type`) from a `to_wire` value
    (`sparse`: in the sparse form)."""
    value = wrappers.as_nest(value)
    specs = list(weights_type.non_trainable)
    non_trainable: list = [None] * len(specs)
    for packed, pos in zip(value["masks"], index.mask_index):
        non_trainable[pos] = bitpack.unpack_mask(
            packed, specs[pos].shape, tf.as_dtype(specs[pos].dtype))
    for pos in index.step_index:
        non_trainable[pos] = tf.cast(value["round"], tf.as_dtype(specs[pos].dtype))
    for v, pos in zip(value["other"], other_positions(index, len(specs))):
        non_trainable[pos] = v
    trainable = list(value["trainable"])
    if sparse:
        for pos, mask_pos in zip(index.kernel_index, index.mask_index):
            trainable[pos] = from_kept_values(trainable[pos], non_trainable[mask_pos])
    # Lists, as TFF gives a ModelWeights argument (tf.nest matches it to a model's).
    return tff.learning.models.ModelWeights(trainable=trainable,
                                            non_trainable=non_trainable)
