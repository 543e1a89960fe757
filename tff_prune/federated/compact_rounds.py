"""Compact-model rounds: clients download, train and upload the smaller model.

Once structured pruning has removed units, the masked model a client would
train is mostly zeros it cannot use. In a compact round the server cuts the
current global model down with the export's compaction (one implementation:
`Compactor.compact`, which the export uses too), each client trains that
physically smaller model, and the server scatters the averaged compact delta
back into its dense weights, so its state, checkpoints, finalizer and mask
refinement are exactly those of masked rounds: a unit a later mask update
brings back returns at its stored dense value.

How a compact model maps onto the dense one is found by compacting an
*index model*: every dense weight set to its global position + 1 (times its
mask, so pruned weights are 0, as in the real masked model). Whatever the
compaction keeps then names its own source: a compact entry holding ``i + 1``
is dense entry ``i``, a 0 is a pruned weight that could not be cut out (it
stays masked in the compact model and travels as a mask bit). This
`CompactPlan` is derived from the masks alone, never from trained values.

The round is one `tff.federated_computation` per architecture (the compact
widths and shapes, and how many weights each compact kernel keeps), built
when that architecture first appears and reused while it lasts; the plan
(gather indices and the compact masks) is a server-placed argument, so a
mask update that keeps the architecture reuses the same computation (the
task's widths decide it; the Conformer's include which residual-stream
columns each writer computes, so moving those builds a new one). Everything
that crosses the wire is typed by it: the compact model in the sparse wire
form of `tff_prune.federated.client_model` down (each kernel's kept values and its
mask bits), the compact delta's kept values up.

With `FullSizeModel` as the compactor nothing is cut: the same machinery
runs masked rounds of the full-size model over the sparse wire (schemes
with no unit to cut, or `--client_model=masked`).

Compact rounds need the clients to know nothing about pruned weights.
Taylor importance and `client_vote` score pruned weights on the clients,
which needs their dense values, but only on a round after which the server
updates masks: that round is the process's own (dense values down, scores
or bit-packed votes up), every other round is compact (or sparse), and the
aggregator reports zeros for the scores no client sent (the finalizer reads
them only when it updates masks; `next` checks that it did not).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.federated import client_model
from tff_prune.federated import client_work as client_work_lib
from tff_prune.federated import compiled
from tff_prune.federated import finalizer as finalizer_lib
from tff_prune.model import wrappers
from tff_prune.pruning import config as config_lib
from tff_prune.task import base

# Float32 holds every integer up to 2**24 exactly: the index model's limit.
_MAX_INDEXED_PARAMS = 2 ** 24
#: Compact architectures kept built: the current one. Each holds traced
#: computations, Keras models and, once run, TFF's compiled forms (in this
#: process and in the workers); a run builds one per mask update, so keeping
#: them all grows memory with every update. Masks seldom return to an
#: earlier architecture (every layer's width the same), which would be
#: built again.
KEPT_ARCHITECTURES = 1


# A task's compaction (`FederatedTask.compactor()`), which the export uses too.
Compactor = base.Compactor


class FullSizeModel:
    """The compactor that cuts nothing: rounds of the masked full-size model
    whose pruned weights travel as mask bits only (the sparse form), for
    schemes that leave no unit to cut (unstructured, block, m_by_n) or when
    `--client_model=masked`."""

    def __init__(self, build_model: Callable[[], tf.keras.Model]):
        self._build_model = build_model

    def compact(self, model: tf.keras.Model) -> tuple[tf.keras.Model, Hashable]:
        return model, None

    def build(self, widths: Hashable) -> tf.keras.Model:
        del widths
        return self._build_model()


class NotCompactable(ValueError):
    """These masks give no compact model equivalent to the masked one."""


def applies(pruning: config_lib.PruningConfig) -> bool:
    """Whether compact rounds can train `pruning`: structured schemes have
    units to cut (see module docstring)."""
    return pruning.enabled and pruning.scheme == "structured"


@dataclasses.dataclass(frozen=True)
class CompactPlan:
    """Where each compact trainable weight comes from in the dense ModelWeights.

    `source[j]`: the dense trainable position of compact weight ``j``;
    `gather[j]`: int32 of its shape, the flat index into that dense weight
    (0 where `valid` is 0); `valid[j]`: float32 0/1, 0 where the compact
    entry is a pruned weight that compaction could not cut out;
    `kept_counts[k]`: the valid entries of the compact model's masked kernel
    ``k`` (the length of its sparse form on the wire).
    """

    widths: Hashable
    source: tuple[int, ...]
    gather: tuple[np.ndarray, ...]
    valid: tuple[np.ndarray, ...]
    kept_counts: tuple[int, ...]

    @property
    def architecture(self) -> Hashable:
        """What decides the round computation's types."""
        return (self.widths, self.source, tuple(g.shape for g in self.gather),
                self.kept_counts)

    def tensors(self) -> collections.OrderedDict:
        """The plan as the round computation's server-placed argument."""
        return collections.OrderedDict(gather=tuple(self.gather), valid=tuple(self.valid))


def _encoded_model(stripped: tf.keras.Model, trainable: Sequence[np.ndarray],
                   masks: Sequence[Optional[np.ndarray]], keys: Sequence[str]
                   ) -> np.ndarray:
    """Sets `stripped`'s weights to global index + 1 (0 where masked); returns
    the offsets of each dense trainable weight in the global index."""
    sizes = np.array([t.size for t in trainable], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    if offsets[-1] >= _MAX_INDEXED_PARAMS:
        raise NotCompactable(f"{offsets[-1]} parameters: the index model holds at most "
                             f"{_MAX_INDEXED_PARAMS}")
    position = {k: i for i, k in enumerate(keys)}
    for variable in stripped.weights:
        pos = position[wrappers.weight_key(variable)]
        encoded = (offsets[pos] + 1 + np.arange(sizes[pos])).reshape(trainable[pos].shape)
        if masks[pos] is not None:
            encoded = encoded * np.broadcast_to(masks[pos] > 0, encoded.shape)
        variable.assign(encoded.astype(np.float32))
    return offsets


def build_plan(weights: tff.learning.models.ModelWeights, index: wrappers.PrunableWeightIndex,
               mask_biases: bool, stripped: tf.keras.Model, compactor: Compactor,
               compact_index: Callable[[Hashable], wrappers.PrunableWeightIndex]
               ) -> CompactPlan:
    """The compact model of `weights`' masks (see module docstring).

    `stripped`: a plain model of the task (its weights are overwritten);
    `compact_index(widths)`: the index of the wrapped compact model to train.
    Raises `NotCompactable` when the compact model's own masks (its kernel
    masks, and the bias masks clients derive from them) would not be the
    dense masks' restriction.
    """
    trainable = [np.asarray(t) for t in weights.trainable]
    non_trainable = [np.asarray(t) for t in weights.non_trainable]
    masks = [None if m is None else np.asarray(m) for m in wrappers.weight_masks(
        [tf.constant(t) for t in non_trainable], index, len(trainable), mask_biases)]
    offsets = _encoded_model(stripped, trainable, masks, index.trainable_keys)
    compact, widths = compactor.compact(stripped)
    values = {wrappers.weight_key(v): v.numpy() for v in compact.weights}
    target = compact_index(widths)
    dense_position = {k: i for i, k in enumerate(index.trainable_keys)}
    source, gather, valid = [], [], []
    for key, shape in zip(target.trainable_keys, target.trainable_shapes):
        encoded = np.rint(values[key]).astype(np.int64)
        kept = encoded > 0
        owners = np.unique(np.searchsorted(offsets, encoded[kept] - 1, side="right") - 1)
        if owners.size > 1:
            raise NotCompactable(f"compact {key} mixes dense weights {owners.tolist()}")
        pos = int(owners[0]) if owners.size else dense_position[key]
        source.append(pos)
        gather.append(np.where(kept, encoded - 1 - offsets[pos], 0).astype(np.int32)
                      .reshape(shape))
        valid.append(kept.astype(np.float32).reshape(shape))
    # Clients derive bias masks from kernel masks: they must be these.
    for k, kernel_pos in enumerate(target.kernel_index):
        bias_pos = target.bias_index[k]
        if mask_biases and bias_pos is not None:
            derived = np.asarray(wrappers.bias_mask_from_kernel_mask(
                tf.constant(valid[kernel_pos]), target.depthwise[k]))
            if not np.array_equal(derived, valid[bias_pos]):
                raise NotCompactable(f"{target.trainable_keys[bias_pos]}: its bias mask is "
                                     "not its compact kernel's")
    masked = set(target.kernel_index) | ({b for b in target.bias_index if b is not None}
                                         if mask_biases else set())
    for j, v in enumerate(valid):
        if j not in masked and not np.all(v):
            raise NotCompactable(f"compact {target.trainable_keys[j]} keeps a pruned weight "
                                 "that nothing masks")
    kept_counts = tuple(int(valid[pos].sum()) for pos in target.kernel_index)
    return CompactPlan(widths, tuple(source), tuple(gather), tuple(valid), kept_counts)


def gather_compact(dense: Sequence[tf.Tensor], plan: Any, source: Sequence[int]
                   ) -> list[tf.Tensor]:
    """The compact weights: dense values at the plan's positions, 0 where not valid."""
    return [tf.gather(tf.reshape(dense[s], [-1]), g) * tf.cast(v, dense[s].dtype)
            for s, g, v in zip(source, plan["gather"], plan["valid"])]


def scatter_compact(compact: Sequence[tf.Tensor], plan: Any, source: Sequence[int],
                    dense_shapes: Sequence[Sequence[int]]) -> list[tf.Tensor]:
    """The dense tensors that hold `compact` at the plan's positions, 0 elsewhere.

    Exact: every dense entry receives at most one valid compact entry (plus
    exact zeros from the not-valid ones).
    """
    out = []
    for pos, shape in enumerate(dense_shapes):
        size = int(np.prod(shape, dtype=np.int64))
        parts = [tf.scatter_nd(tf.reshape(g, [-1, 1]),
                               tf.reshape(c * tf.cast(v, c.dtype), [-1]), [size])
                 for c, g, v, s in zip(compact, plan["gather"], plan["valid"], source)
                 if s == pos]
        total = tf.zeros([size], tf.float32) if not parts else tf.add_n(parts)
        out.append(tf.reshape(total, shape))
    return out


def scatter_sent_delta(sent: Sequence[tf.Tensor], plan: Any, kernel_index: Sequence[int],
                       source: Sequence[int], dense_shapes: Sequence[Sequence[int]]
                       ) -> list[tf.Tensor]:
    """The dense delta of a compact delta as clients send it (each masked
    kernel in the sparse form, at the positions `kernel_index`)."""
    compact = list(sent)
    for pos in kernel_index:
        compact[pos] = client_model.from_kept_values(compact[pos], plan["valid"][pos])
    return scatter_compact(compact, plan, source, dense_shapes)


@dataclasses.dataclass
class CompactArchitecture:
    """The round computation of one architecture, and what it carries."""

    next: tff.Computation
    client_work: tff.learning.templates.ClientWorkProcess
    wire: tff.Computation           # (dense weights, plan) -> what clients receive
    model_fn: Callable[[], tf.keras.Model]
    index: wrappers.PrunableWeightIndex


class CompactRounds:
    """Runs the rounds of a `FederatedPruningProcess` on compact models.

    `next(state, client_data)` is the process's `next` where the masks in
    `state` remove nothing, and the compact round of their architecture
    otherwise; states, checkpoints and metrics are the process's own.
    """

    def __init__(self, built, compactor: Compactor,
                 compose: Optional[Callable[[tff.Computation], tff.Computation]] = None,
                 on_model_built: Optional[wrappers.OnModelBuilt] = None):
        """`compose` turns a round computation into the one the driver calls
        (e.g. with client datasets built from ids; `client_data.ClientInputs`).
        `on_model_built(model_fn, model)` sees each architecture's first
        build before its computations are traced (as the process's)."""
        self.built = built
        self._on_model_built = on_model_built
        self.compose = compose or (lambda computation: computation)
        self.compactor = compactor
        self.compacts = not isinstance(compactor, FullSizeModel)
        # Clients score pruned weights on mask-update rounds (process rounds);
        # the rounds between them are compact even before anything is pruned.
        self.scores = client_work_lib.needs_dense_values(built.pruning)
        self._stripped = built.task.build_model()
        # The latest architectures only (see `KEPT_ARCHITECTURES`), oldest first.
        self._architectures: collections.OrderedDict[Hashable, CompactArchitecture] = \
            collections.OrderedDict()
        self._plans: dict[str, tuple[Optional[CompactPlan], bool]] = {}
        # The weights whose masks were hashed last, and their digest: a round
        # asks for its plan several times with the same state.
        self._hashed: tuple[Any, str] = (None, "")
        self._indexes: collections.OrderedDict[Hashable, tuple] = collections.OrderedDict()
        #: Architectures built and then dropped (what holds their compiled
        #: forms elsewhere, e.g. TFF workers, may release them too).
        self.forgotten_architectures = 0

    # ----------------------------------------------------------------- plans

    def _wrapped(self, widths: Hashable) -> tuple[Callable[[], tf.keras.Model],
                                                 wrappers.PrunableWeightIndex, tf.keras.Model]:
        if widths in self._indexes:
            self._indexes.move_to_end(widths)
        else:
            prunable = self.built.prunable_layers
            compact = self.compactor.build(widths)

            def model_fn():
                # Wrapped clones of one built model (as the process's model_fn).
                return wrappers.wrap_for_pruning(compact, prunable)
            model = model_fn()
            if self._on_model_built is not None:
                self._on_model_built(model_fn, model)
            self._indexes[widths] = (model_fn, wrappers.index_prunable_weights(model), model)
            while len(self._indexes) > KEPT_ARCHITECTURES:
                self._indexes.popitem(last=False)
        return self._indexes[widths]

    def _plan_and_pruned(self, state) -> tuple[Optional[CompactPlan], bool]:
        index = self.built.index
        weights = state.global_model_weights
        masks = [np.asarray(weights.non_trainable[i]) for i in index.mask_index]
        if self._hashed[0] is weights:
            digest = self._hashed[1]
        else:
            digest = hashlib.sha256(b"".join(m.tobytes() for m in masks)).hexdigest()
            self._hashed = (weights, digest)  # held: its id is not reused meanwhile
        if digest not in self._plans:
            plan = None
            pruned = any(np.any(m == 0) for m in masks)
            if pruned or self.scores:
                try:
                    plan = build_plan(weights, index, self.built.pruning.masks_biases,
                                      self._stripped, self.compactor,
                                      lambda w: self._wrapped(w)[1])
                except NotCompactable as e:
                    tf.get_logger().warning("masked round instead of a compact one: %s", e)
            self._plans = {digest: (plan, pruned)}  # masks change rarely; keep the latest
        return self._plans[digest]

    def plan(self, state) -> Optional[CompactPlan]:
        """The compact plan of `state`'s masks; None while nothing is pruned
        and clients send no scores (or, logged, when these masks cannot be
        compacted exactly)."""
        return self._plan_and_pruned(state)[0]

    def scores_round(self, state) -> bool:
        """Whether the round after `state` is one whose clients score pruned
        weights (a mask update follows it): the process's own round."""
        round_num = int(np.asarray(state.finalizer["round_num"])) + 1
        return self.scores and bool(finalizer_lib.updates_masks(self.built.pruning, round_num))

    def client_model_for(self, state) -> str:
        """'compact' when the round after `state` trains a model with units cut
        out, else 'masked' (the full-size model)."""
        plan, pruned = self._plan_and_pruned(state)
        compact = self.compacts and pruned and plan is not None
        return "compact" if compact and not self.scores_round(state) else "masked"

    # ----------------------------------------------------------------- rounds

    def architecture(self, plan: CompactPlan) -> CompactArchitecture:
        """The round computation of `plan`'s architecture: built once while
        it is one of the `KEPT_ARCHITECTURES` latest, then forgotten."""
        key = plan.architecture
        if key in self._architectures:
            self._architectures.move_to_end(key)
            return self._architectures[key]
        architecture = self._architectures[key] = self._build(plan)
        if len(self._architectures) > KEPT_ARCHITECTURES:  # one added at a time
            self._architectures.popitem(last=False)
            self.forgotten_architectures += 1
            # TFF's compile cache holds every computation it ran, the
            # forgotten architecture's among them; the kept ones recompile.
            compiled.forget_compiled_computations()
        return architecture

    @property
    def kept_architectures(self) -> int:
        """How many compact architectures this holds built."""
        return len(self._architectures)

    def _build(self, plan: CompactPlan) -> CompactArchitecture:
        built = self.built
        pruning = built.pruning
        model_fn, index, model = self._wrapped(plan.widths)
        weights_type = wrappers.model_weights_type(model)
        kept_counts = plan.kept_counts
        client_work = client_work_lib.build_pruning_client_work(
            built.task, model_fn, index, pruning, built.client_optimizer,
            weights_type=weights_type, kept_counts=kept_counts, send_scores=False)
        result_type = client_work.next.type_signature.result.result.member
        # Scores and votes the process's clients send and these do not: the
        # aggregator keeps their state and reports zeros (unread: no mask update).
        full_fields = dict(tff.structure.iter_elements(
            built.client_work.next.type_signature.result.result.member.update))
        sent = dict(tff.structure.iter_elements(result_type.update))
        aggregator = built.aggregator_factory.create(
            result_type.update, result_type.update_weight,
            idle={n: t for n, t in full_fields.items() if n not in sent})
        dense_type = built.weights_type
        plan_type = tff.types.to_type(tf.nest.map_structure(
            lambda a: tff.TensorType(a.dtype, a.shape), plan.tensors()))
        source = plan.source
        dense_shapes = built.index.trainable_shapes
        dense_index = built.index
        # The same wrappers in the same layer order: the compact model's other
        # non-trainable weights (tfmot's threshold scalars) are the dense ones.
        num_non_trainable = len(model.non_trainable_weights)
        compact_other = client_model.other_positions(index, num_non_trainable)
        dense_other = client_model.other_positions(
            dense_index, len(dense_type.non_trainable))
        if len(compact_other) != len(dense_other):
            raise ValueError("the compact model's wrappers differ from the dense model's")

        @tff.tensorflow.computation(dense_type, plan_type)
        def wire(weights, plan_value):
            plan_value = wrappers.as_nest(plan_value)
            # The compact model's ModelWeights: gathered weights, its masks
            # (the plan's), the dense round; sent in the one wire form.
            non_trainable = [None] * num_non_trainable
            for mask_pos, kernel_pos in zip(index.mask_index, index.kernel_index):
                non_trainable[mask_pos] = plan_value["valid"][kernel_pos]
            for pos in index.step_index:
                non_trainable[pos] = weights.non_trainable[dense_index.step_index[0]]
            for c, d in zip(compact_other, dense_other):
                non_trainable[c] = weights.non_trainable[d]
            compact = tff.learning.models.ModelWeights(
                trainable=gather_compact(list(weights.trainable), plan_value, source),
                non_trainable=non_trainable)
            return client_model.to_wire(compact, index, pruning.masks_biases,
                                        dense_values=False, kept_counts=kept_counts)

        update_type = aggregator.next.type_signature.result.result.member

        @tff.tensorflow.computation(update_type, plan_type)
        def scatter(update, plan_value):
            update, plan_value = wrappers.as_nest(update), wrappers.as_nest(plan_value)
            dense = collections.OrderedDict(update)
            dense["delta"] = tuple(scatter_sent_delta(
                list(update["delta"]), plan_value, index.kernel_index, source,
                dense_shapes))
            return dense

        state_type = built.process.next.type_signature.parameter[0]
        data_type = built.process.next.type_signature.parameter[1]
        finalizer = built.finalizer
        # The compact aggregator must keep the process's aggregator state.
        state_type.member.aggregator.check_assignable_from(
            aggregator.initialize.type_signature.result.member)

        # Client data last: TFF 0.87's mergeable context (a cohort split
        # across workers) carries its client offset from one part to the next
        # through the argument's last element only; with data in the middle
        # every part would get the first clients.
        @tff.federated_computation(state_type, tff.FederatedType(plan_type, tff.SERVER),
                                   data_type)
        def next_fn(state, plan_value, client_data):
            received = tff.federated_broadcast(
                tff.federated_map(wire, (state.global_model_weights, plan_value)))
            client_output = client_work.next(state.client_work, received, client_data)
            aggregator_output = aggregator.next(
                state.aggregator, client_output.result.update,
                client_output.result.update_weight)
            dense_update = tff.federated_map(scatter, (aggregator_output.result, plan_value))
            finalizer_output = finalizer.next(state.finalizer, state.global_model_weights,
                                              dense_update)
            new_state = tff.federated_zip(tff.learning.templates.LearningAlgorithmState(
                finalizer_output.result, state.distributor, client_output.state,
                aggregator_output.state, finalizer_output.state))
            metrics = tff.federated_zip(collections.OrderedDict(
                distributor=tff.federated_value((), tff.SERVER),
                client_work=client_output.measurements,
                aggregator=aggregator_output.measurements,
                finalizer=finalizer_output.measurements))
            return tff.learning.templates.LearningProcessOutput(new_state, metrics)

        return CompactArchitecture(next_fn, client_work, wire, model_fn, index)

    def next(self, state, client_data) -> tff.learning.templates.LearningProcessOutput:
        """One round: the process's own where clients score pruned weights or
        nothing is pruned, else compact (or sparse)."""
        plan = None if self.scores_round(state) else self.plan(state)
        if plan is None:
            return self.compose(self.built.process.next)(state, client_data)
        output = self.compose(self.architecture(plan).next)(state, plan.tensors(),
                                                            client_data)
        if self.scores and "masks_updated" in output.metrics["finalizer"] and bool(
                output.metrics["finalizer"]["masks_updated"]):
            # The masks would have been decided on the zeros standing in for scores.
            raise RuntimeError("a round without client scores updated the masks: "
                               "scores_round disagrees with the finalizer")
        return output

    def model_fn_for(self, state) -> Callable[[], tf.keras.Model]:
        """Builds the (wrapped) model the clients of the round after `state` train."""
        plan = None if self.scores_round(state) else self.plan(state)
        return self.built.model_fn if plan is None else self.architecture(plan).model_fn

    def client_work_for(self, state) -> tff.learning.templates.ClientWorkProcess:
        """The client work the round of `state` runs (for its wire types)."""
        plan = None if self.scores_round(state) else self.plan(state)
        return (self.built.client_work if plan is None
                else self.architecture(plan).client_work)
