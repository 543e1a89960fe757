"""Masked weighted mean: each coordinate averages over clients that kept it."""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.federated import aggregation


def _value_type(shape):
    odict = collections.OrderedDict
    return tff.StructWithPythonType([
        ("values", tff.StructWithPythonType(
            [("w", tff.TensorType(np.float32, shape)),
             ("b", tff.TensorType(np.float32, [2]))], odict)),
        ("masks", tff.StructWithPythonType(
            [("w", tff.TensorType(np.float32, shape)),
             ("b", tff.TensorType(np.float32, []))], odict)),
    ], odict)


def test_masked_mean_averages_only_over_unmasked_clients(tff_runtime):
    process = aggregation.MaskedWeightedMeanFactory().create(
        _value_type([3]), tff.TensorType(np.float32))
    # Coordinate 0 kept by all 3 clients, 1 by clients 0 and 2, 2 by none.
    clients = [
        (dict(w=[1.0, 10.0, 0.0], b=[1.0, 1.0]), dict(w=[1, 1, 0], b=1.0), 1.0),
        (dict(w=[2.0, 0.0, 0.0], b=[2.0, 2.0]), dict(w=[1, 0, 0], b=1.0), 2.0),
        (dict(w=[3.0, 40.0, 0.0], b=[3.0, 3.0]), dict(w=[1, 1, 0], b=1.0), 3.0),
    ]
    values = [collections.OrderedDict(
        values=collections.OrderedDict(w=np.array(v["w"], np.float32),
                                       b=np.array(v["b"], np.float32)),
        masks=collections.OrderedDict(w=np.array(m["w"], np.float32),
                                      b=np.float32(m["b"])))
        for v, m, _ in clients]
    weights = [np.float32(w) for _, _, w in clients]
    out = process.next(process.initialize(), values, weights)
    w = out.result["w"]
    np.testing.assert_allclose(w[0], (1 * 1 + 2 * 2 + 3 * 3) / 6, rtol=1e-6)
    # Over clients 0 and 2 only (weights 1 and 3), not diluted by client 1.
    np.testing.assert_allclose(w[1], (10 * 1 + 40 * 3) / 4, rtol=1e-6)
    assert w[2] == 0.0
    np.testing.assert_allclose(out.result["b"], [14 / 6, 14 / 6], rtol=1e-6)


def _client(w, b, mask_w):
    return collections.OrderedDict(
        values=collections.OrderedDict(w=np.array(w, np.float32), b=np.array(b, np.float32)),
        masks=collections.OrderedDict(w=np.array(mask_w, np.float32), b=np.float32(1)))


def test_clip_norm_clips_each_clients_own_delta_before_weighting(tff_runtime):
    # Unequal client sizes: a clip of the weighted contribution would clip at C/w_i.
    process = aggregation.MaskedWeightedMeanFactory(clip_norm=1.0).create(
        _value_type([2]), tff.TensorType(np.float32))
    clients = [_client([3.0, 40.0], [0.0, 4.0], [1, 0]),   # masked part (40) is not clipped in
               _client([0.3, 0.4], [0.0, 0.0], [1, 1])]    # norm 0.5: untouched
    weights = [np.float32(1.0), np.float32(9.0)]
    out = process.next(process.initialize(), clients, weights)
    # Client 0's kept delta (w=[3, 0], b=[0, 4]) has norm 5 -> scaled by 1/5.
    c0_w, c0_b = np.array([0.6, 0.0]), np.array([0.0, 0.8])
    c1_w, c1_b = np.array([0.3, 0.4]), np.array([0.0, 0.0])
    expected_w = [(1 * c0_w[0] + 9 * c1_w[0]) / 10, c1_w[1]]  # w[1] only on client 1
    expected_b = (1 * c0_b + 9 * c1_b) / 10
    np.testing.assert_allclose(out.result["w"], expected_w, rtol=1e-5)
    np.testing.assert_allclose(out.result["b"], expected_b, rtol=1e-5)
    # The old placement (TFF's clipping sum under the mean) clips w_i*m_i*v_i instead.
    old = aggregation.MaskedWeightedMeanFactory(
        value_sum_factory=tff.aggregators.clipping_factory(
            1.0, tff.aggregators.SumFactory())).create(
        _value_type([2]), tff.TensorType(np.float32))
    old_out = old.next(old.initialize(), clients, weights)
    assert not np.allclose(old_out.result["w"], expected_w, rtol=1e-3)


def test_clip_norm_stacks_with_an_inner_sum_factory(tff_runtime):
    # clip_norm clips per client; a TFF sum factory (here: clipping of the
    # weighted sum at norm 0.5) still applies under the mean.
    factory = aggregation.MaskedWeightedMeanFactory(
        value_sum_factory=tff.aggregators.clipping_factory(
            0.5, tff.aggregators.SumFactory()), clip_norm=1.0)
    process = factory.create(_value_type([2]), tff.TensorType(np.float32))
    value = _client([30.0, 40.0], [0.0, 0.0], [1, 1])
    out = process.next(process.initialize(), [value], [np.float32(1.0)])
    np.testing.assert_allclose(out.result["w"], [0.3, 0.4], rtol=1e-5)


def test_without_client_masks_it_is_the_masked_mean_of_a_shared_mask_bit_for_bit(tff_runtime):
    # Every client trains under the server's mask, so its deltas are already
    # zero where that mask prunes: the mean without masks on the wire must be
    # exactly the masked mean, pruned coordinates included (0).
    rng = np.random.default_rng(0)
    mask = np.array([1, 0, 1, 1, 0, 1], np.float32)
    clients = [_client(rng.normal(size=6).astype(np.float32) * mask,
                       rng.normal(size=2), mask) for _ in range(3)]
    weights = [np.float32(w) for w in (3.0, 7.0, 5.0)]
    masked = aggregation.MaskedWeightedMeanFactory(clip_norm=2.0).create(
        _value_type([6]), tff.TensorType(np.float32))
    values_only_type = tff.StructWithPythonType(
        [("values", _value_type([6])[0])], collections.OrderedDict)
    unmasked = aggregation.MaskedWeightedMeanFactory(clip_norm=2.0).create(
        values_only_type, tff.TensorType(np.float32))
    expected = masked.next(masked.initialize(), clients, weights).result
    got = unmasked.next(unmasked.initialize(),
                        [collections.OrderedDict(values=c["values"]) for c in clients],
                        weights).result
    for key in ("w", "b"):
        np.testing.assert_array_equal(got[key], expected[key])
    assert np.all(got["w"][mask == 0] == 0)
