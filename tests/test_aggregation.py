"""Masked weighted mean: each coordinate averages over clients that kept it."""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_prune import aggregation


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


def test_masked_mean_stacks_with_tff_clipping(tff_runtime):
    # Clip each client's weighted contribution to norm 1 through TFF's factory.
    factory = aggregation.MaskedWeightedMeanFactory(
        value_sum_factory=tff.aggregators.clipping_factory(
            1.0, tff.aggregators.SumFactory()))
    process = factory.create(_value_type([2]), tff.TensorType(np.float32))
    value = collections.OrderedDict(
        values=collections.OrderedDict(w=np.array([30.0, 40.0], np.float32),
                                       b=np.zeros([2], np.float32)),
        masks=collections.OrderedDict(w=np.ones([2], np.float32), b=np.float32(1)))
    out = process.next(process.initialize(), [value], [np.float32(1.0)])
    np.testing.assert_allclose(out.result["w"], [0.6, 0.8], rtol=1e-5)
