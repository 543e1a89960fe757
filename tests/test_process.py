"""The federated pruning process on the tiny model, through the real TFF runtime."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_prune import config as config_lib
from tff_prune import process as process_lib
from tff_prune import variable_model
from tff_prune.pruning import schedule as schedule_lib


def _schedule(begin=1, end=2, every=1, refine=0, target=0.5, kind="step"):
    return schedule_lib.PruningSchedule(kind=kind, target_sparsity=target,
                                        begin_round=begin, end_round=end,
                                        every_rounds=every, refine_rounds=refine)


def _datasets(task, round_num, clients=None):
    clients = clients or task.train_client_ids[:3]
    return [task.client_dataset(c, training=True, seed=round_num * 10 + i)
            for i, c in enumerate(clients)]


def _kernels(weights, index):
    return {k: np.asarray(weights.trainable[i]) for k, i in zip(index.keys, index.kernel_index)}


def test_pruning_none_equals_tff_fed_avg(tiny_task, tff_runtime):
    sgd = tff.learning.optimizers.build_sgdm(0.05)
    server = tff.learning.optimizers.build_sgdm(1.0)
    ours = process_lib.build_federated_pruning_process(
        tiny_task, config_lib.PruningConfig(scheme="none"), sgd, server, seed=3)
    fed_avg = tff.learning.algorithms.build_weighted_fed_avg(
        lambda: variable_model.TaskVariableModel(tiny_task, tiny_task.build_model()),
        client_optimizer_fn=sgd, server_optimizer_fn=server)
    our_state = ours.process.initialize()
    initial = ours.process.get_model_weights(our_state)
    their_state = fed_avg.set_model_weights(fed_avg.initialize(), initial)
    data = _datasets(tiny_task, 1)
    our_state = ours.process.next(our_state, data).state
    their_state = fed_avg.next(their_state, data).state
    mine = ours.process.get_model_weights(our_state).trainable
    theirs = fed_avg.get_model_weights(their_state).trainable
    moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(mine, initial.trainable))
    assert moved > 1e-3  # the round really trained
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


# Every pruning scheme under every mask policy; structures and importances
# rotate through the combinations so that each appears too.
@pytest.mark.parametrize("scheme,structure,policy,importance", [
    ("unstructured", "column", "server", "magnitude"),
    ("block", "column", "server", "magnitude"),
    ("m_by_n", "column", "server", "taylor"),
    ("unstructured", "column", "client_vote", "taylor"),
    ("unstructured", "column", "fixed", "magnitude"),
    ("structured", "row", "client_vote", "magnitude"),
    ("structured", "head", "fixed", "magnitude"),
    ("structured", "channel", "server", "taylor"),
    ("structured", "half_column", "server", "magnitude"),
    ("block", "column", "client_vote", "magnitude"),
    ("block", "column", "fixed", "taylor"),
    ("m_by_n", "column", "client_vote", "magnitude"),
    ("m_by_n", "column", "fixed", "magnitude"),
])
def test_three_rounds_reach_target_with_masked_weights_zero_and_loss_falling(
        tiny_task, tff_runtime, scheme, structure, policy, importance):
    pruning = config_lib.PruningConfig(scheme=scheme, structure=structure, policy=policy,
                                       importance=importance,
                                       schedule=_schedule(begin=1, end=2))
    built = process_lib.build_federated_pruning_process(
        tiny_task, pruning, tff.learning.optimizers.build_adam(3e-3),
        tff.learning.optimizers.build_sgdm(1.0))
    state = built.process.initialize()
    losses = []
    for r in range(1, 4):
        data = [d.repeat(2) for d in _datasets(tiny_task, r)]
        out = built.process.next(state, data)
        state = out.state
        train = out.metrics["client_work"]["train"]
        losses.append(float(train["loss_sum"]) / float(train["num_examples"]))
        # Round 3 trains under the final masks: the clients' masked deltas
        # must be zero there, so the dense server weights keep their values.
        if r == 2:
            before = state.global_model_weights
    assert losses[-1] < losses[0], losses
    after = state.global_model_weights
    masks = [np.asarray(after.non_trainable[i]) for i in built.index.mask_index]
    for mask, kpos in zip(masks, built.index.kernel_index):
        np.testing.assert_array_equal(
            np.asarray(after.trainable[kpos])[mask == 0],
            np.asarray(before.trainable[kpos])[mask == 0])
    masked = built.process.get_model_weights(state)
    kernels = _kernels(masked, built.index)
    covered = built.decider.covered_keys
    zeros = sum(int(np.sum(kernels[k] == 0)) for k in covered)
    total = sum(kernels[k].size for k in covered)
    # The target, up to one unit/block of rounding per budget layer (m_by_n:
    # the 1-input-channel first conv is excluded, partial groups stay dense).
    assert abs(zeros / total - 0.5) < 0.03, zeros / total
    for key, mask in zip(built.index.keys, masks):
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert np.all(kernels[key][mask == 0] == 0)


def test_refinement_revives_a_pruned_unit_and_fixed_never_does(tiny_task, tff_runtime):
    results = {}
    for policy in ("server", "fixed"):
        pruning = config_lib.PruningConfig(
            scheme="structured", structure="column", policy=policy,
            schedule=_schedule(begin=1, end=1, refine=2, target=0.5, kind="constant"))
        built = process_lib.build_federated_pruning_process(
            tiny_task, pruning, tff.learning.optimizers.build_sgdm(1e-3),
            tff.learning.optimizers.build_sgdm(1.0))
        state = built.process.initialize()
        state = built.process.next(state, _datasets(tiny_task, 1)).state
        weights = state.global_model_weights
        k = built.index.keys.index("block0_ff1_in/kernel")
        kpos = built.index.kernel_index[k]
        mask = np.asarray(weights.non_trainable[built.index.mask_index[k]])
        pruned_col = int(np.flatnonzero(mask[0] == 0)[0])
        # Hand-made: the server's dense copy of a pruned column becomes huge.
        trainable = [np.asarray(t).copy() for t in weights.trainable]
        trainable[kpos][:, pruned_col] = 100.0
        state = built.process.set_model_weights(state, tff.learning.models.ModelWeights(
            trainable, [np.asarray(t) for t in weights.non_trainable]))
        state = built.process.next(state, _datasets(tiny_task, 2)).state
        new_mask = np.asarray(
            state.global_model_weights.non_trainable[built.index.mask_index[k]])
        results[policy] = new_mask[:, pruned_col]
    assert np.all(results["server"] == 1.0)   # refinement brought it back
    assert np.all(results["fixed"] == 0.0)    # fixed masks never change


def test_client_vote_with_identical_clients_equals_server(tiny_task, tff_runtime):
    same = [tiny_task.train_client_ids[0]] * 2
    masks = {}
    for policy in ("server", "client_vote"):
        pruning = config_lib.PruningConfig(scheme="structured", structure="column",
                                           policy=policy, schedule=_schedule(begin=1, end=1))
        built = process_lib.build_federated_pruning_process(
            tiny_task, pruning, tff.learning.optimizers.build_sgdm(1e-2),
            tff.learning.optimizers.build_sgdm(1.0))
        state = built.process.initialize()
        data = [tiny_task.client_dataset(c, training=True, seed=7) for c in same]
        out = built.process.next(state, data)
        if policy == "client_vote":
            assert float(out.metrics["finalizer"]["vote_agreement"]) == pytest.approx(1.0)
        masks[policy] = [np.asarray(out.state.global_model_weights.non_trainable[i])
                         for i in built.index.mask_index]
    for a, b in zip(masks["server"], masks["client_vote"]):
        np.testing.assert_array_equal(a, b)


def test_runs_are_reproducible_bit_for_bit(tiny_task, tff_runtime):
    pruning = config_lib.PruningConfig(scheme="unstructured", schedule=_schedule())
    finals = []
    for _ in range(2):
        built = process_lib.build_federated_pruning_process(
            tiny_task, pruning, tff.learning.optimizers.build_adam(1e-3),
            tff.learning.optimizers.build_sgdm(1.0), seed=11)
        state = built.process.initialize()
        for r in range(1, 3):
            state = built.process.next(state, _datasets(tiny_task, r)).state
        finals.append(built.process.get_model_weights(state))
    for a, b in zip(finals[0].trainable, finals[1].trainable):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
