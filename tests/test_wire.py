"""What crosses the wire: bit-packed masks and byte counts read from TFF types."""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.federated import wire
from tff_prune.pruning import bitpack


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (3, 5), (15, 1, 32, 1)])
def test_packed_mask_unpacks_to_the_same_mask(shape):
    rng = np.random.default_rng(sum(shape))
    mask = (rng.random(shape) < 0.5).astype(np.float32)
    packed = bitpack.pack_mask(tf.constant(mask))
    assert packed.dtype == tf.uint8
    assert packed.shape == (bitpack.packed_size(mask.size),)
    np.testing.assert_array_equal(bitpack.unpack_mask(packed, shape).numpy(), mask)


def test_packing_is_row_major_and_little_endian_within_a_byte():
    mask = np.zeros(10, np.float32)
    mask[[0, 3, 9]] = 1.0
    np.testing.assert_array_equal(bitpack.pack_mask(tf.constant(mask)).numpy(),
                                  [0b00001001, 0b00000010])


def test_packing_works_inside_a_tff_computation(tff_runtime):
    @tff.tensorflow.computation(tff.TensorType(np.float32, [4, 3]))
    def round_trip(mask):
        return bitpack.unpack_mask(bitpack.pack_mask(mask), [4, 3])

    mask = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], np.float32)
    np.testing.assert_array_equal(round_trip(mask), mask)


def test_type_bytes_counts_every_tensor_of_a_structure():
    value_type = tff.types.to_type(collections.OrderedDict(
        weights=(tff.TensorType(np.float32, [3, 4]), tff.TensorType(np.float32, [4])),
        mask=tff.TensorType(np.uint8, [2]), round=tff.TensorType(np.int64)))
    assert wire.type_bytes(value_type) == 4 * 12 + 4 * 4 + 2 + 8
    assert wire.type_bytes(tff.FederatedType(value_type, tff.CLIENTS)) == 74
    with pytest.raises(ValueError):
        wire.type_bytes(tff.TensorType(np.float32, [None]))


def test_kept_values_round_trip_exactly_to_the_masked_tensor():
    from tff_prune.federated import client_model
    rng = np.random.default_rng(1)
    value = rng.normal(size=(6, 5)).astype(np.float32)
    mask = (rng.random((6, 5)) < 0.3).astype(np.float32)
    count = int(mask.sum())
    sent = client_model.kept_values(tf.constant(value), tf.constant(mask), count)
    assert sent.shape == (count,)
    np.testing.assert_array_equal(sent.numpy(), value[mask > 0])  # row-major
    back = client_model.from_kept_values(sent, tf.constant(mask)).numpy()
    np.testing.assert_array_equal(back, value * mask)
