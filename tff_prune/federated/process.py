"""`build_federated_pruning_process`: the method as one TFF LearningProcess.

Composed from `tff.learning.templates` parts:

  broadcast (the weights in their wire form: masked values or, for Taylor
             scores and client votes, dense ones; bit-packed masks; the round)
    -> client work (masked local training, Taylor scores / bit-packed votes)
    -> aggregator (masked weighted mean of deltas, weighted means of the rest)
    -> finalizer (server optimizer, then the scheduled mask update)

`get_model_weights` returns the masked model (what clients train and what
is exported); the state keeps dense weights so refinement can revive weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.federated import aggregation
from tff_prune.federated import client_work as client_work_lib
from tff_prune.federated import finalizer as finalizer_lib
from tff_prune.model import mask_policy
from tff_prune.model import wrappers
from tff_prune.pruning import config as config_lib
from tff_prune.task import base


@dataclasses.dataclass
class FederatedPruningProcess:
    """The learning process and what callers need to use its weights."""

    process: tff.learning.templates.LearningProcess
    # Builds the wrapped model (fresh weights, overwritten by whoever uses it).
    model_fn: Callable[[], tf.keras.Model]
    index: wrappers.PrunableWeightIndex
    decider: mask_policy.MaskDecider
    prunable_layers: list[str]
    # The process's own client work (what each client runs), for inspection.
    client_work: Optional[tff.learning.templates.ClientWorkProcess] = None
    # The parts compact-model rounds reuse (`tff_prune.federated.compact_rounds`).
    task: Optional[base.FederatedTask] = None
    pruning: Optional[config_lib.PruningConfig] = None
    client_optimizer: Optional[tff.learning.optimizers.Optimizer] = None
    aggregator_factory: Optional[aggregation.PruningUpdateAggregatorFactory] = None
    finalizer: Optional[tff.learning.templates.FinalizerProcess] = None
    weights_type: Optional[tff.types.Type] = None
    # The server's encoding of its weights for the clients (what is broadcast).
    to_wire: Optional[tff.Computation] = None


def masked_model_weights(weights: tff.learning.models.ModelWeights,
                         index: wrappers.PrunableWeightIndex,
                         mask_biases: bool) -> tff.learning.models.ModelWeights:
    """The model clients see: every masked weight set to exactly zero."""
    trainable = list(weights.trainable)
    masks = wrappers.weight_masks(list(weights.non_trainable), index,
                                         len(trainable), mask_biases)
    return tff.learning.models.ModelWeights(
        trainable=tuple(wrappers.apply_weight_masks(trainable, masks)),
        non_trainable=tuple(weights.non_trainable))


def initial_model_weights(model: tf.keras.Model, index: wrappers.PrunableWeightIndex
                          ) -> tff.learning.models.ModelWeights:
    """`model`'s weights (numpy), masks all ones, pruning step 1."""
    weights = tff.learning.models.ModelWeights.from_model(model)
    trainable = [np.asarray(v.numpy()) for v in weights.trainable]
    non_trainable = [np.asarray(v.numpy()) for v in weights.non_trainable]
    for pos in index.step_index:
        non_trainable[pos] = np.asarray(1, non_trainable[pos].dtype)
    return tff.learning.models.ModelWeights(trainable, non_trainable)


def _validate_optimizer_hparams(client_optimizer, server_optimizer):
    for name, opt in (("client", client_optimizer), ("server", server_optimizer)):
        if not isinstance(opt, tff.learning.optimizers.Optimizer):
            raise TypeError(f"{name}_optimizer must be a tff.learning.optimizers."
                            f"Optimizer, got {type(opt).__name__}")


def build_federated_pruning_process(
    task: base.FederatedTask,
    pruning: config_lib.PruningConfig,
    client_optimizer: tff.learning.optimizers.Optimizer,
    server_optimizer: tff.learning.optimizers.Optimizer,
    delta_aggregator: Optional[aggregation.MaskedWeightedMeanFactory] = None,
    seed: int = 0,
    initial_model: Optional[tf.keras.Model] = None,
    on_model_built: Optional[wrappers.OnModelBuilt] = None,
) -> FederatedPruningProcess:
    """Federated pruning of `task`'s model as a `LearningProcess`.

    Args:
      task: model, data and loss.
      pruning: scheme, importance, allocation, mask policy and schedule.
      client_optimizer / server_optimizer: `tff.learning.optimizers`.
      delta_aggregator: how deltas are averaged; stack TFF clipping/DP sum
        factories under it via its `value_sum_factory`.
      seed: initial weights (unless `initial_model` gives them).
      initial_model: the task's model (unwrapped) whose weights the process
        starts from, e.g. a seed model trained elsewhere; masks start all ones.
      on_model_built: called with (model_fn, a model it built) before the
        first trace, while that model can still be called (e.g. to count its
        FLOPs: `accounting.ClientStepFlops.count`).
    """
    _validate_optimizer_hparams(client_optimizer, server_optimizer)
    # Seeded before the first model is built: the seed alone fixes the
    # initial weights (those of `model`, the wrapped clone below).
    tf.keras.utils.set_random_seed(seed)
    reference = task.build_model()
    excluded = mask_policy.excluded_layers(task, pruning)
    prunable = (wrappers.select_prunable_layers(reference, excluded)
                if pruning.enabled else [])
    if pruning.enabled and not prunable:
        raise config_lib.ConfigError(
            f"--exclude_layers={excluded!r} leaves no prunable layer")

    def model_fn() -> tf.keras.Model:
        # Wrapped clones of one built model: building the task's model from
        # scratch would double what each trace pays for its model.
        return wrappers.wrap_for_pruning(reference, prunable)

    # One model for the index, the initial weights and the weights' type:
    # building (and wrapping) a Keras model is a large part of tracing cost.
    model = model_fn()
    if on_model_built is not None:
        on_model_built(model_fn, model)
    if initial_model is not None:
        wrappers.assign_unwrapped_weights(model, initial_model)
    index = wrappers.index_prunable_weights(model)
    decider = mask_policy.MaskDecider(pruning, index, task.model_structure)
    initial = initial_model_weights(model, index)

    @tff.tensorflow.computation
    def initial_weights_fn():
        return tff.learning.models.ModelWeights(
            trainable=tuple(tf.constant(t) for t in initial.trainable),
            non_trainable=tuple(tf.constant(t) for t in initial.non_trainable))

    weights_type = initial_weights_fn.type_signature.result
    schedule = pruning.schedule

    def vote_sparsity(round_num):
        # The sparsity of the mask update after this round; -1: none follows.
        return tf.where(finalizer_lib.updates_masks(pruning, round_num),
                        tf.cast(schedule.sparsity(round_num), tf.float32), -1.0)

    client_work = client_work_lib.build_pruning_client_work(
        task, model_fn, index, pruning, client_optimizer,
        weights_type=wrappers.model_weights_type(model),
        propose_masks_fn=decider.from_scores, sparsity_for_round_fn=vote_sparsity)
    client_result_type = client_work.next.type_signature.result.result.member
    aggregator_factory = aggregation.PruningUpdateAggregatorFactory(
        delta_aggregator, vote_shapes=[index.trainable_shapes[i] for i in index.kernel_index])
    aggregator = aggregator_factory.create(
        client_result_type.update, client_result_type.update_weight)
    finalizer = finalizer_lib.build_pruning_finalizer(
        server_optimizer, weights_type, aggregator.next.type_signature.result.result.member,
        index, pruning, decider)
    composed = tff.learning.templates.compose_learning_process(
        initial_weights_fn,
        client_work_lib.build_wire_distributor(weights_type, index, pruning),
        client_work, aggregator, finalizer)

    state_type = composed.next.type_signature.parameter[0].member

    @tff.tensorflow.computation(state_type)
    def get_masked_model_weights(state):
        return masked_model_weights(state.global_model_weights, index,
                                    pruning.masks_biases)

    process = tff.learning.templates.LearningProcess(
        composed.initialize, composed.next, get_masked_model_weights,
        composed.set_model_weights, get_hparams_fn=composed.get_hparams,
        set_hparams_fn=composed.set_hparams)
    return FederatedPruningProcess(
        process, model_fn, index, decider, prunable, client_work=client_work,
        task=task, pruning=pruning, client_optimizer=client_optimizer,
        aggregator_factory=aggregator_factory, finalizer=finalizer,
        weights_type=weights_type,
        to_wire=client_work_lib.to_wire_computation(weights_type, index, pruning))
