"""Client work: masked local training of the wrapped model.

Mirrors TFF's `model_delta_client_work` (same loop, same `tff.learning`
optimizer calls, same `initial - trained` update and example weighting), so
with pruning off one round equals `tff.learning.algorithms.build_weighted_fed_avg`.
With pruning on, each client:

* reads the masks and the round from the broadcast `ModelWeights.non_trainable`
  (the tfmot wrappers' `mask` and `pruning_step` variables, written by the
  server);
* applies the masks before training, then trains by
  `tff_prune.model.local_step.masked_step` (masked gradients, masked
  updates: pruned weights stay exactly zero throughout and the optimizer
  state never accumulates on them);
* receives the model in its wire form (`tff_prune.federated.client_model`: bit-packed
  masks, masked values unless it needs the dense ones) and decodes it;
* returns its masked delta (no participation mask: every client trains under
  the server's masks, so the server knows it) and - when the method asks for
  them - Taylor importance (the one definition in
  `tff_prune.pruning.importance`: mean over its steps of |w * dL/dw|, w the
  broadcast dense value) and its own mask proposal for `client_vote`,
  bit-packed (`tff_prune.pruning.bitpack`). Both only on rounds after which
  the server updates masks (`send_scores`); on the others they would decide
  nothing.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Optional

import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.federated import client_data
from tff_prune.federated import client_model
from tff_prune.model import local_step
from tff_prune.model import wrappers
from tff_prune.pruning import bitpack
from tff_prune.pruning import config as config_lib
from tff_prune.pruning import importance as importance_lib
from tff_prune.task import base


def needs_dense_values(pruning: config_lib.PruningConfig) -> bool:
    """Whether clients need pruned weights' dense values: Taylor importance
    scores a pruned weight at its dense value, `client_vote` may vote one back."""
    return pruning.enabled and (pruning.importance == "taylor"
                                or pruning.policy == "client_vote")


def to_wire_computation(weights_type: tff.types.Type, index: wrappers.PrunableWeightIndex,
                        pruning: config_lib.PruningConfig,
                        kept_counts: Optional[Sequence[int]] = None,
                        send_scores: bool = True) -> tff.Computation:
    """The server's encoding of `weights_type` weights for these clients
    (dense values only where they score this round)."""
    dense_values = send_scores and needs_dense_values(pruning)

    @tff.tensorflow.computation(weights_type)
    def to_wire(weights):
        return client_model.to_wire(weights, index, pruning.masks_biases,
                                    dense_values, kept_counts)
    return to_wire


def wire_type(weights_type: tff.types.Type, index: wrappers.PrunableWeightIndex,
              pruning: config_lib.PruningConfig,
              kept_counts: Optional[Sequence[int]] = None,
              send_scores: bool = True) -> tff.types.Type:
    """Type of what one client receives (see `tff_prune.federated.client_model`)."""
    return to_wire_computation(weights_type, index, pruning, kept_counts,
                               send_scores).type_signature.result


def build_wire_distributor(weights_type: tff.types.Type,
                           index: wrappers.PrunableWeightIndex,
                           pruning: config_lib.PruningConfig
                           ) -> tff.learning.templates.DistributionProcess:
    """Broadcasts the server's weights in their wire form (no state)."""
    to_wire = to_wire_computation(weights_type, index, pruning)

    @tff.federated_computation
    def init_fn():
        return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(weights_type, tff.SERVER))
    def next_fn(state, weights):
        return tff.templates.MeasuredProcessOutput(
            state=state,
            result=tff.federated_broadcast(tff.federated_map(to_wire, weights)),
            measurements=tff.federated_value((), tff.SERVER))

    return tff.learning.templates.DistributionProcess(init_fn, next_fn)


def build_pruning_client_work(
    task: base.FederatedTask,
    model_fn: Callable[[], tf.keras.Model],
    index: wrappers.PrunableWeightIndex,
    pruning: config_lib.PruningConfig,
    client_optimizer: tff.learning.optimizers.Optimizer,
    propose_masks_fn: Optional[Callable[..., list]] = None,
    sparsity_for_round_fn: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
    weights_type: Optional[tff.types.Type] = None,
    kept_counts: Optional[Sequence[int]] = None,
    send_scores: bool = True,
) -> tff.learning.templates.ClientWorkProcess:
    """A `ClientWorkProcess` training the wrapped model under the server's masks.

    Args:
      task: supplies the batch loss.
      model_fn: builds the wrapped Keras model (weights are overwritten).
      index: where kernels, biases, masks and pruning steps sit in ModelWeights.
      pruning: the method (decides Taylor scores, votes and bias masking).
      client_optimizer: a `tff.learning.optimizers.Optimizer`.
      propose_masks_fn: for `client_vote`: (kernel scores, sparsity, coupled
        bias scores) -> kernel masks.
      sparsity_for_round_fn: for `client_vote`: sparsity the next mask update
        will target, given the round being trained (a tf int64 scalar), or
        a negative value when the next round does not update masks.
      weights_type: the TFF type of `model_fn()`'s ModelWeights, when the
        caller knows it (saves building a model just to read it).
      kept_counts: per masked kernel, how many weights its mask keeps: the
        sparse form (`tff_prune.federated.client_model`) both ways, each kernel and its
        delta as the kept values only. Needs masks the server knows exactly.
      send_scores: whether clients send the Taylor importance and mask votes
        `pruning` asks for (False on rounds after which no mask is updated).

    The process's `next` takes the weights in their wire form, of type
    `wire_type(...)` for the same `weights_type`, `index` and `pruning`.
    """
    want_taylor = send_scores and pruning.enabled and pruning.importance == "taylor"
    want_vote = send_scores and pruning.enabled and pruning.policy == "client_vote"
    mask_biases = pruning.masks_biases

    if weights_type is None:
        weights_type = wrappers.model_weights_type(model_fn())
    data_type = tff.SequenceType(wrappers.tff_type(task.batch_spec))

    @tf.function
    def client_update(model, optimizer_hparams, initial_weights, dataset):
        model_weights = tff.learning.models.ModelWeights.from_model(model)
        tf.nest.map_structure(lambda v, t: v.assign(t), model_weights,
                              initial_weights)
        trainable = list(model_weights.trainable)
        masks = wrappers.weight_masks(list(initial_weights.non_trainable), index,
                                      len(trainable), mask_biases)
        dense_kernels = [initial_weights.trainable[i] for i in index.kernel_index]
        # Clients see only the masked model.
        for v, masked in zip(trainable, wrappers.apply_weight_masks(trainable, masks)):
            v.assign(masked)
        masked_initial = [tf.identity(v) for v in trainable]

        specs = tuple(tf.TensorSpec(v.shape, v.dtype) for v in trainable)
        opt_state = client_optimizer.initialize(specs)
        opt_state = client_optimizer.set_hparams(opt_state, optimizer_hparams)
        importance = importance_lib.init_taylor_accumulator(dense_kernels)
        num_steps = tf.constant(0, tf.int64)
        num_examples = tf.constant(0, tf.int64)
        loss_sum = tf.constant(0.0, tf.float32)

        # A while loop over an iterator, not a scan instantiated per call.
        for batch in client_data.loop_batches(dataset):
            opt_state, loss, n, grads = local_step.masked_step(
                trainable, masks, client_optimizer, opt_state,
                lambda batch=batch: task.batch_loss(model, batch, training=True))
            if want_taylor:
                # Score every kernel weight (pruned ones at their dense value).
                importance = importance_lib.accumulate_taylor(
                    importance, dense_kernels, [grads[i] for i in index.kernel_index])
            num_examples += tf.cast(n, tf.int64)
            num_steps += 1
            loss_sum += loss * tf.cast(n, tf.float32)

        delta = [a - b for a, b in zip(masked_initial, trainable)]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(d)) for d in delta])
        delta = [tf.where(finite, d, tf.zeros_like(d)) for d in delta]
        weight = tf.where(finite, tf.cast(num_examples, tf.float32), 0.0)
        if kept_counts is not None:
            delta = client_model.sparse_kernels(
                delta, index, [masks[i] for i in index.kernel_index], kept_counts)

        importance = tuple(importance_lib.finalize_taylor(importance, num_steps))
        update = collections.OrderedDict(delta=tuple(delta))
        if want_taylor:
            update["importance"] = importance
        if want_vote:
            target = sparsity_for_round_fn(
                tf.cast(initial_weights.non_trainable[index.step_index[0]], tf.int64))
            # Local view: trained values where kept, dense broadcast values
            # where pruned, so a client can vote a pruned weight back.
            local = wrappers.where_kept([trainable[i] for i in index.kernel_index],
                                        dense_kernels,
                                        [masks[i] for i in index.kernel_index])
            scores = list(importance) if want_taylor else [tf.abs(w) for w in local]
            bias_scores = {} if want_taylor else {
                index.trainable_keys[i]: tf.abs(trainable[i])
                for i in index.bias_index if i is not None}
            proposal = tf.cond(
                target >= 0.0,
                lambda: tuple(propose_masks_fn(scores, tf.maximum(target, 0.0),
                                               bias_scores)),
                lambda: tuple(masks[i] for i in index.kernel_index))
            update["vote"] = tuple(bitpack.pack_mask(p) for p in proposal)
        metrics = collections.OrderedDict(
            loss_sum=loss_sum, num_examples=num_examples)
        return tff.learning.templates.ClientResult(update=update,
                                                   update_weight=weight), metrics

    hparams = local_step.optimizer_hparams(client_optimizer)

    @tff.federated_computation
    def init_fn():
        return tff.federated_value(hparams, tff.SERVER)

    state_type = init_fn.type_signature.result.member

    received_type = wire_type(weights_type, index, pruning, kept_counts, send_scores)

    @tff.tensorflow.computation(state_type, received_type, data_type)
    def client_computation(optimizer_hparams, received, dataset):
        initial_weights = client_model.from_wire(received, index, weights_type,
                                                 sparse=kept_counts is not None)
        return client_update(model_fn(), optimizer_hparams, initial_weights, dataset)

    @tff.federated_computation(
        init_fn.type_signature.result,
        tff.FederatedType(received_type, tff.CLIENTS),
        tff.FederatedType(data_type, tff.CLIENTS))
    def next_fn(state, weights, client_data):
        results, metrics = tff.federated_map(
            client_computation,
            (tff.federated_broadcast(state), weights, client_data))
        totals = tff.federated_sum(metrics)
        return tff.templates.MeasuredProcessOutput(
            state=state, result=results,
            measurements=tff.federated_zip(collections.OrderedDict(train=totals)))

    @tff.tensorflow.computation(state_type)
    def get_hparams_fn(state):
        return state

    @tff.tensorflow.computation(state_type, state_type)
    def set_hparams_fn(state, new_hparams):
        del state
        return new_hparams

    return tff.learning.templates.ClientWorkProcess(
        init_fn, next_fn, get_hparams_fn=get_hparams_fn,
        set_hparams_fn=set_hparams_fn)
