"""Aggregation of pruned client updates, as `tff.aggregators` factories.

`MaskedWeightedMeanFactory` averages each coordinate over the clients that
actually had it unmasked: sum_i w_i m_i v_i / sum_i w_i m_i. A plain FedAvg
mean would dilute coordinates pruned on some clients with their zeros. Like
`tff.aggregators.MeanFactory`, it sums the weighted values through an inner
unweighted factory, so TFF's compression or DP sum factories stack under it.
Norm clipping of each client's own delta is `clip_norm`: it applies before the
weighting, as `tff.aggregators.clipping_factory(C, MeanFactory())` does (a
clipping sum factory under the mean would see w_i*m_i*v_i and clip at C/w_i).

Sums are accumulated at the server in float64 (`Float64SumFactory`): clients
send float32 as before, and the mean is the same however the cohort is split
across TFF workers (which add clients in parts) or ordered.

`PackedMaskMeanFactory` is the example-weighted mean of 0/1 masks that
clients send bit-packed: the server unpacks each client's bits as it
accumulates them, so only the packed bytes cross the wire.

`PruningUpdateAggregatorFactory` aggregates the whole client update of our
client work: the delta by masked mean, the Taylor importance by
example-weighted mean, the bit-packed mask votes by `PackedMaskMeanFactory`.
On rounds whose clients send no scores or votes (no mask update follows
them) it keeps those aggregators' state and reports zeros in their place.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.model import wrappers
from tff_prune.pruning import bitpack
from tff_prune.pruning import masks as masks_lib


def _struct_field(struct_type: tff.types.StructType, name: str) -> tff.types.Type:
    return dict(tff.structure.iter_elements(struct_type))[name]


def _zeros(value_type: tff.types.Type):
    """Zeros of `value_type` (tensors, nested in structs), in a TF graph."""
    if isinstance(value_type, tff.TensorType):
        return tf.zeros(value_type.shape, value_type.dtype)
    elements = list(tff.structure.iter_elements(value_type))
    if all(name is None for name, _ in elements):
        return tuple(_zeros(t) for _, t in elements)
    return collections.OrderedDict((name, _zeros(t)) for name, t in elements)


def _zeros_computation(value_type: tff.types.Type) -> tff.Computation:
    @tff.tensorflow.computation
    def zeros():
        return _zeros(value_type)
    return zeros


def _accumulator_type(value_type: tff.types.Type) -> tff.types.Type:
    """`value_type` with float64 in place of each floating dtype."""
    if isinstance(value_type, tff.TensorType):
        dtype = np.float64 if np.issubdtype(value_type.dtype, np.floating) else value_type.dtype
        return tff.TensorType(dtype, value_type.shape)
    return tff.StructType([(name, _accumulator_type(t))
                           for name, t in tff.structure.iter_elements(value_type)])


class Float64SumFactory(tff.aggregators.UnweightedAggregationFactory):
    """`tff.aggregators.SumFactory` whose server accumulator is float64.

    Clients send their values as they are (float32: the wire is unchanged);
    the server adds them up in float64 and rounds to float32 once, at the
    end. A float32 sum depends on the order clients are added in, and a
    cohort split across TFF workers adds them in parts, (a + b) + (c + d)
    instead of ((a + b) + c) + d; with one rounding at the end, the sum is
    the same to float32 however the cohort is split or ordered.
    """

    def create(self, value_type) -> tff.templates.AggregationProcess:
        acc_type = _accumulator_type(value_type)

        @tff.tensorflow.computation
        def zero():
            return _zeros(acc_type)

        @tff.tensorflow.computation(acc_type, value_type)
        def accumulate(acc, value):
            return tf.nest.map_structure(lambda a, v: a + tf.cast(v, a.dtype),
                                         wrappers.as_nest(acc), wrappers.as_nest(value))

        @tff.tensorflow.computation(acc_type, acc_type)
        def merge(a, b):
            return tf.nest.map_structure(tf.add, wrappers.as_nest(a), wrappers.as_nest(b))

        value_dtypes = tf.nest.map_structure(
            lambda t: t.dtype, wrappers.as_nest(tff.types.type_to_tf_tensor_specs(value_type)))

        @tff.tensorflow.computation(acc_type)
        def report(acc):
            return tf.nest.map_structure(tf.cast, wrappers.as_nest(acc), value_dtypes)

        @tff.federated_computation
        def init_fn():
            return tff.federated_value((), tff.SERVER)

        @tff.federated_computation(init_fn.type_signature.result,
                                   tff.FederatedType(value_type, tff.CLIENTS))
        def next_fn(state, value):
            total = tff.federated_aggregate(value, zero(), accumulate, merge, report)
            return tff.templates.MeasuredProcessOutput(
                state=state, result=total, measurements=tff.federated_value((), tff.SERVER))

        return tff.templates.AggregationProcess(init_fn, next_fn)


class PackedMaskMeanFactory(tff.aggregators.WeightedAggregationFactory):
    """Example-weighted mean of 0/1 masks sent bit-packed.

    Value type: a tuple of `tff_prune.pruning.bitpack.pack_mask` bytes, one
    per mask of `shapes`. Each client's bits are unpacked as they are
    accumulated (`tff.federated_aggregate`), so the wire carries one bit per
    weight. Result: per weight, the weighted fraction of clients keeping it.
    """

    def __init__(self, shapes: Sequence[Sequence[int]]):
        self._shapes = [tuple(int(d) for d in s) for s in shapes]

    def create(self, value_type, weight_type) -> tff.templates.AggregationProcess:
        shapes = self._shapes
        if len(value_type) != len(shapes):
            raise ValueError(f"{len(value_type)} packed masks for {len(shapes)} shapes")
        sums_type = tff.StructType([tff.TensorType(np.float32, s) for s in shapes])
        acc_type = tff.StructType([("sums", sums_type), ("weight", tff.TensorType(np.float32))])

        @tff.tensorflow.computation
        def zero():
            return collections.OrderedDict(
                sums=tuple(tf.zeros(s, tf.float32) for s in shapes),
                weight=tf.constant(0.0))

        @tff.tensorflow.computation(acc_type, tff.StructType([value_type, weight_type]))
        def accumulate(acc, client):
            packed, weight = client
            weight = tf.cast(weight, tf.float32)
            return collections.OrderedDict(
                sums=tuple(s + bitpack.unpack_mask(p, shape) * weight
                           for s, p, shape in zip(acc.sums, packed, shapes)),
                weight=acc.weight + weight)

        @tff.tensorflow.computation(acc_type, acc_type)
        def merge(a, b):
            return collections.OrderedDict(
                sums=tuple(x + y for x, y in zip(a.sums, b.sums)),
                weight=a.weight + b.weight)

        @tff.tensorflow.computation(acc_type)
        def report(acc):
            return tuple(tf.math.divide_no_nan(s, acc.weight) for s in acc.sums)

        @tff.federated_computation
        def init_fn():
            return tff.federated_value((), tff.SERVER)

        @tff.federated_computation(
            init_fn.type_signature.result,
            tff.FederatedType(value_type, tff.CLIENTS),
            tff.FederatedType(weight_type, tff.CLIENTS))
        def next_fn(state, value, weight):
            mean = tff.federated_aggregate(tff.federated_zip((value, weight)), zero(),
                                           accumulate, merge, report)
            return tff.templates.MeasuredProcessOutput(
                state=state, result=mean, measurements=tff.federated_value((), tff.SERVER))

        return tff.templates.AggregationProcess(init_fn, next_fn)


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
        self._value_sum_factory = value_sum_factory or Float64SumFactory()
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

    Result `{delta[, importance][, vote]}`: the masked mean of the deltas, the
    example-weighted mean of Taylor importance and of the bit-packed binary
    mask votes (a vote mean is the weighted fraction of clients keeping each
    weight; `vote_shapes` are the voted kernels' shapes).

    `create(..., idle=...)` names fields (with the client value types they
    have on other rounds) that this round's clients do not send: the process
    keeps their state and gives zeros as their result, so a round that
    updates no mask runs with the same state and finalizer as one that does.
    """

    def __init__(self, delta_factory: Optional[MaskedWeightedMeanFactory] = None,
                 vote_shapes: Optional[Sequence[Sequence[int]]] = None):
        self._delta_factory = delta_factory or MaskedWeightedMeanFactory()
        self._vote_shapes = vote_shapes

    def _field_factory(self, name: str) -> tff.aggregators.WeightedAggregationFactory:
        if name == "vote":
            if self._vote_shapes is None:
                raise ValueError("bit-packed votes need vote_shapes")
            return PackedMaskMeanFactory(self._vote_shapes)
        return tff.aggregators.MeanFactory(value_sum_factory=Float64SumFactory())

    def create(self, value_type, weight_type,
               idle: Optional[Mapping[str, tff.types.Type]] = None
               ) -> tff.templates.AggregationProcess:
        idle = dict(idle or {})
        fields = dict(tff.structure.iter_elements(value_type))
        client_masks = "mask" in fields
        delta_value_type = tff.StructType(
            [("values", fields["delta"])]
            + ([("masks", fields["mask"])] if client_masks else []))
        delta_process = self._delta_factory.create(delta_value_type, weight_type)
        extra = [name for name in ("importance", "vote") if name in fields or name in idle]
        mean_processes = {name: self._field_factory(name).create(
            fields[name] if name in fields else idle[name], weight_type) for name in extra}
        idle_zeros = {name: _zeros_computation(
            mean_processes[name].next.type_signature.result.result.member)
            for name in extra if name not in fields}

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
                if name in idle_zeros:
                    outputs[name] = tff.templates.MeasuredProcessOutput(
                        state=state[name],
                        result=tff.federated_eval(idle_zeros[name], tff.SERVER),
                        measurements=tff.federated_value((), tff.SERVER))
                else:
                    outputs[name] = process.next(state[name], value[name], weight)
            return tff.templates.MeasuredProcessOutput(
                state=tff.federated_zip(collections.OrderedDict(
                    (n, o.state) for n, o in outputs.items())),
                result=tff.federated_zip(collections.OrderedDict(
                    (n, o.result) for n, o in outputs.items())),
                measurements=tff.federated_zip(collections.OrderedDict(
                    (n, o.measurements) for n, o in outputs.items())))

        return tff.templates.AggregationProcess(init_fn, next_fn)
