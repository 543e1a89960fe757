"""Masks on the wire: 0/1 masks packed 8 per byte, and back (pure TF).

A float32 mask costs 32 bits per weight, as much as the weight itself; a
client only needs one. `pack_mask` turns a mask of any shape into
``ceil(n / 8)`` uint8 bytes (little-endian bit order inside a byte, row-major
over the mask); `unpack_mask` restores it exactly, given the shape, which the
receiving computation knows from its type.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf



def _bit_values() -> tf.Tensor:
    # Made per call: an eager constant cannot be captured by TFF's graphs.
    return tf.constant([1, 2, 4, 8, 16, 32, 64, 128], tf.int32)


def packed_size(num_elements: int) -> int:
    """Bytes `pack_mask` gives for a mask of `num_elements` entries."""
    return (int(num_elements) + 7) // 8


def pack_mask(mask: tf.Tensor) -> tf.Tensor:
    """uint8[ceil(n/8)]: bit ``i % 8`` of byte ``i // 8`` is 1 where the
    flattened ``mask[i] > 0``."""
    n = int(mask.shape.num_elements())
    bits = tf.cast(tf.reshape(mask, [-1]) > 0, tf.int32)
    bits = tf.pad(bits, [[0, packed_size(n) * 8 - n]])
    packed = tf.reduce_sum(tf.reshape(bits, [-1, 8]) * _bit_values(), axis=1)
    return tf.cast(packed, tf.uint8)


def unpack_mask(packed: tf.Tensor, shape: Sequence[int],
                dtype: tf.dtypes.DType = tf.float32) -> tf.Tensor:
    """The 0/1 mask of `shape` that `pack_mask` packed into `packed`."""
    n = 1
    for s in shape:
        n *= int(s)
    bytes_ = tf.cast(tf.reshape(packed, [-1, 1]), tf.int32)
    bits = tf.bitwise.bitwise_and(bytes_, _bit_values()) > 0
    return tf.reshape(tf.cast(tf.reshape(bits, [-1])[:n], dtype), shape)
