"""Aggregation of pruned client updates, as `tff.aggregators` factories.

`MaskedWeightedMeanFactory` averages each coordinate over the clients that
actually had it unmasked: sum_i w_i m_i v_i / sum_i w_i m_i. A plain FedAvg
mean would dilute coordinates pruned on some clients with their zeros. Like
`tff.aggregators.MeanFactory`, it sums the weighted values through an inner
unweighted factory, so TFF's compression or DP sum factories stack under it.
Norm clipping of each client's own delta is `clip_norm`: it applies before the
weighting, as `tff.aggregators.clipping_factory(C, MeanFactory())` does (a
clipping sum factory under the mean would see w_i*m_i*v_i and clip at C/w_i).

`PruningUpdateAggregatorFactory` aggregates the whole client update of our
client work: the delta by masked mean, the Taylor importance and the mask
votes by example-weighted mean.
"""

from __future__ import annotations

import collections
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_prune import wrappers
from tff_prune.pruning import masks as masks_lib


def _struct_field(struct_type: tff.types.StructType, name: str) -> tff.types.Type:
    return dict(tff.structure.iter_elements(struct_type))[name]


class MaskedWeightedMeanFactory(tff.aggregators.WeightedAggregationFactory):
    """Weighted mean per coordinate over the clients where it is unmasked.

    Value type: a struct `(values=<T>, masks=<M>)` where `M` has `T`'s nesting
    and each mask is either `T`'s shape or a scalar (1.0: never masked), or
    `(values=<T>)` alone when every client trains under the same masks (the
    server's), so that its masked values are already zero where it prunes:
    then it is the example-weighted mean and no mask crosses the wire.
    Result: `T`; a coordinate masked on every client averages to 0.
    `clip_norm > 0` scales each client's masked values m_i*v_i to global L2
    norm <= clip_norm before they are weighted; masks are never clipped.
    """

    def __init__(self, value_sum_factory: Optional[
            tff.aggregators.UnweightedAggregationFactory] = None,
                 clip_norm: float = 0.0):
        if clip_norm < 0:
            raise ValueError(f"clip_norm must be >= 0, got {clip_norm}")
        self._value_sum_factory = value_sum_factory or tff.aggregators.SumFactory()
        self._clip_norm = float(clip_norm)

    def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
        values_type = _struct_field(value_type, "values")
        has_masks = "masks" in dict(tff.structure.iter_elements(value_type))
        # Without client masks, one scalar denominator: the summed weight.
        masks_type = (_struct_field(value_type, "masks") if has_masks
                      else tff.TensorType(np.float32))
        value_sum = self._value_sum_factory.create(values_type)
        clip_norm = self._clip_norm

        def weigh_fn(values, masks, weight):
            values = wrappers.as_nest(values)
            masks = wrappers.as_nest(masks) if has_masks else tf.nest.map_structure(
                lambda v: tf.constant(1.0), values)
            weight = tf.cast(weight, tf.float32)
            kept = tf.nest.map_structure(masks_lib.mask_weight, values, masks)
            if clip_norm > 0:
                # The client's own delta, before weighting: clip at C, not C/w_i.
                flat, _ = tf.clip_by_global_norm(tf.nest.flatten(kept), clip_norm)
                kept = tf.nest.pack_sequence_as(kept, flat)
            numerators = tf.nest.map_structure(
                lambda v: v * tf.cast(weight, v.dtype), kept)
            denominators = (tf.nest.map_structure(
                lambda m: tf.cast(m, tf.float32) * weight, masks) if has_masks else weight)
            return numerators, denominators

        if has_masks:
            weigh = tff.tensorflow.computation(weigh_fn, values_type, masks_type, weight_type)
        else:
            weigh = tff.tensorflow.computation(
                lambda values, weight: weigh_fn(values, None, weight),
                values_type, weight_type)

        @tff.tensorflow.computation(values_type, masks_type)
        def divide(numerators, denominators):
            numerators = wrappers.as_nest(numerators)
            if not has_masks:
                return tf.nest.map_structure(
                    lambda n: tf.math.divide_no_nan(n, tf.cast(denominators, n.dtype)),
                    numerators)
            denominators = wrappers.as_nest(denominators)
            return tf.nest.map_structure(
                lambda n, d: tf.math.divide_no_nan(n, tf.cast(d, n.dtype)),
                numerators, denominators)

        @tff.federated_computation
        def init_fn():
            return value_sum.initialize()

        @tff.federated_computation(
            init_fn.type_signature.result,
            tff.FederatedType(value_type, tff.CLIENTS),
            tff.FederatedType(weight_type, tff.CLIENTS))
        def next_fn(state, value, weight):
            numerators, denominators = tff.federated_map(
                weigh, ((value.values, value.masks, weight) if has_masks
                        else (value.values, weight)))
            summed = value_sum.next(state, numerators)
            mean = tff.federated_map(
                divide, (summed.result, tff.federated_sum(denominators)))
            return tff.templates.MeasuredProcessOutput(
                state=summed.state, result=mean,
                measurements=tff.federated_zip(collections.OrderedDict(
                    value_sum_process=summed.measurements)))

        return tff.templates.AggregationProcess(init_fn, next_fn)


class PruningUpdateAggregatorFactory(tff.aggregators.WeightedAggregationFactory):
    """Aggregates `{delta[, mask][, importance][, vote]}` client updates.

    Result `{delta[, importance][, vote]}`: the masked mean of the deltas and
    the example-weighted means of Taylor importance and binary mask votes (a
    vote mean is the weighted fraction of clients keeping each weight).
    """

    def __init__(self, delta_factory: Optional[MaskedWeightedMeanFactory] = None):
        self._delta_factory = delta_factory or MaskedWeightedMeanFactory()

    def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
        fields = dict(tff.structure.iter_elements(value_type))
        client_masks = "mask" in fields
        delta_value_type = tff.StructType(
            [("values", fields["delta"])]
            + ([("masks", fields["mask"])] if client_masks else []))
        delta_process = self._delta_factory.create(delta_value_type, weight_type)
        extra = [name for name in ("importance", "vote") if name in fields]
        mean_processes = {name: tff.aggregators.MeanFactory().create(
            fields[name], weight_type) for name in extra}

        @tff.federated_computation
        def init_fn():
            return tff.federated_zip(collections.OrderedDict(
                delta=delta_process.initialize(),
                **{n: p.initialize() for n, p in mean_processes.items()}))

        @tff.federated_computation(
            init_fn.type_signature.result,
            tff.FederatedType(value_type, tff.CLIENTS),
            tff.FederatedType(weight_type, tff.CLIENTS))
        def next_fn(state, value, weight):
            delta_in = tff.federated_zip(collections.OrderedDict(
                values=value.delta, masks=value.mask) if client_masks
                else collections.OrderedDict(values=value.delta))
            outputs = collections.OrderedDict(
                delta=delta_process.next(state.delta, delta_in, weight))
            for name, process in mean_processes.items():
                outputs[name] = process.next(state[name], value[name], weight)
            return tff.templates.MeasuredProcessOutput(
                state=tff.federated_zip(collections.OrderedDict(
                    (n, o.state) for n, o in outputs.items())),
                result=tff.federated_zip(collections.OrderedDict(
                    (n, o.result) for n, o in outputs.items())),
                measurements=tff.federated_zip(collections.OrderedDict(
                    (n, o.measurements) for n, o in outputs.items())))

        return tff.templates.AggregationProcess(init_fn, next_fn)
