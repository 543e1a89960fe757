"""Server finalizer: optimizer step, then the mask update of the schedule.

State: the server optimizer state and the number of finished rounds. After
round r's aggregate is applied, if the schedule prunes at round r, the new
masks at `schedule.sparsity(r)` are computed by the mask policy and written
into the wrappers' `mask` variables (`ModelWeights.non_trainable`); every
wrapper's `pruning_step` becomes r + 1, the round clients train next.

The server keeps the *dense* trainable weights: a pruned weight keeps the value
it had when it was pruned (its masked delta is 0 and the optimizer result is
discarded there), so refinement can judge it against the kept weights and
bring it back. Clients only ever see and train the masked model, and
`get_model_weights` returns the masked model.
"""

from __future__ import annotations

import collections

import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.model import mask_policy
from tff_prune.model import wrappers
from tff_prune.pruning import config as config_lib
from tff_prune.pruning import stats


def updates_masks(pruning: config_lib.PruningConfig, round_num):
    """Whether the server updates masks after round `round_num` (an int, or a
    tf scalar for a bool tensor): on the schedule's grid, or once at its
    first round under the `fixed` policy."""
    python = not tf.is_tensor(round_num)
    if not pruning.enabled:
        return False if python else tf.constant(False)
    schedule = pruning.schedule
    if pruning.policy == "fixed":
        if python:
            return int(round_num) == schedule.begin_round
        return tf.equal(round_num, schedule.begin_round)
    return schedule.should_update_masks(round_num)


def build_pruning_finalizer(
    server_optimizer: tff.learning.optimizers.Optimizer,
    weights_type: tff.types.Type,
    update_type: tff.types.Type,
    index: wrappers.PrunableWeightIndex,
    pruning: config_lib.PruningConfig,
    decider: mask_policy.MaskDecider,
) -> tff.learning.templates.FinalizerProcess:
    """A FinalizerProcess applying the aggregate and updating the masks."""
    trainable_specs = tuple(tf.TensorSpec(t.shape, t.dtype)
                            for t in weights_type.trainable)
    schedule = pruning.schedule

    @tff.tensorflow.computation
    def init_tf():
        return collections.OrderedDict(
            optimizer=server_optimizer.initialize(trainable_specs),
            round_num=tf.constant(0, tf.int64))

    @tff.federated_computation
    def init_fn():
        return tff.federated_eval(init_tf, tff.SERVER)

    state_type = init_tf.type_signature.result

    @tff.tensorflow.computation(state_type, weights_type, update_type)
    def server_update(state, weights, update):
        trainable = list(weights.trainable)
        non_trainable = list(weights.non_trainable)
        masks = wrappers.weight_masks(non_trainable, index, len(trainable),
                                      pruning.masks_biases)
        # The optimizer steps the model the clients train (pruned weights at
        # zero): where a step depends on the weights themselves (LAMB's trust
        # ratio ||w|| / ||r||, weight decay) it is the masked model's.
        opt_state, stepped = server_optimizer.next(
            state["optimizer"], tuple(wrappers.apply_weight_masks(trainable, masks)),
            tuple(update["delta"]))
        # Pruned coordinates keep their dense value (momentum must not move them).
        new_trainable = wrappers.where_kept(stepped, trainable, masks)
        round_num = state["round_num"] + 1
        old_masks = [non_trainable[i] for i in index.mask_index]
        measurements = collections.OrderedDict()
        if pruning.enabled and index.keys:
            kernels = [new_trainable[i] for i in index.kernel_index]
            do_update = updates_masks(pruning, round_num)
            sparsity = tf.cast(schedule.sparsity(round_num), tf.float32)
            if pruning.policy == "fixed":
                # Once, straight at the target; never refined.
                sparsity = tf.constant(schedule.target_sparsity, tf.float32)
            if pruning.policy == "client_vote":
                proposed = decider.from_votes(
                    list(update["vote"]), kernels, sparsity,
                    decider.coupled_magnitudes(new_trainable, index))
                # Only an update round has votes that decided anything: NaN otherwise.
                measurements["vote_agreement"] = tf.where(
                    do_update, decider.agreement(list(update["vote"]), proposed),
                    tf.constant(float("nan"), tf.float32))
            else:
                scores = (list(update["importance"]) if pruning.importance == "taylor"
                          else [tf.abs(k) for k in kernels])
                proposed = decider.from_scores(
                    scores, sparsity,
                    None if pruning.importance == "taylor"
                    else decider.coupled_magnitudes(new_trainable, index))
            new_masks = [tf.where(do_update, p, o) for p, o in zip(proposed, old_masks)]
            for pos, m in zip(index.mask_index, new_masks):
                non_trainable[pos] = m
            changed = tf.add_n([tf.reduce_sum(tf.abs(n - o))
                                for n, o in zip(new_masks, old_masks)])
            total = float(sum(int(m.shape.num_elements()) for m in new_masks))
            measurements["masks_updated"] = do_update
            measurements["mask_change_fraction"] = changed / total
            measurements["sparsity"] = stats.mask_sparsity(
                dict(zip(index.keys, new_masks)), decider.covered_keys)["overall"]
        for pos in index.step_index:
            non_trainable[pos] = tf.cast(round_num + 1, non_trainable[pos].dtype)
        new_weights = tff.learning.models.ModelWeights(
            trainable=tuple(new_trainable), non_trainable=tuple(non_trainable))
        new_state = collections.OrderedDict(optimizer=opt_state, round_num=round_num)
        measurements["round_num"] = round_num
        return new_state, new_weights, measurements

    @tff.federated_computation(
        init_fn.type_signature.result,
        tff.FederatedType(weights_type, tff.SERVER),
        tff.FederatedType(update_type, tff.SERVER))
    def next_fn(state, weights, update):
        new_state, new_weights, measurements = tff.federated_map(
            server_update, (state, weights, update))
        return tff.templates.MeasuredProcessOutput(
            state=new_state, result=new_weights, measurements=measurements)

    return tff.learning.templates.FinalizerProcess(init_fn, next_fn)
