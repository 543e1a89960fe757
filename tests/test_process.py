"""The federated pruning process on the micro model, through the real TFF runtime.

Every check reads the thing itself: the clients' own updates come from the
process's client work run on the broadcast state (`_client_updates`), not
from `get_model_weights` (which applies the masks itself). Tracing a process
is the expensive part, so each distinct process is built once per module
(`_built`) and shared by the tests that need it.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.federated import finalizer as finalizer_lib
from tff_prune.federated import lamb
from tff_prune.federated import process as process_lib
from tff_prune.model import variable_model
from tff_prune.model import wrappers
from tff_prune.pruning import bitpack
from tff_prune.pruning import config as config_lib
from tff_prune.pruning import schedule as schedule_lib

_OPTIMIZERS = {"adam": tff.learning.optimizers.build_adam,
               "sgd": tff.learning.optimizers.build_sgdm}
_BUILT = {}


def _schedule(begin=1, end=2, every=1, refine=0, target=0.5, kind="step"):
    return schedule_lib.PruningSchedule(kind=kind, target_sparsity=target,
                                        begin_round=begin, end_round=end,
                                        every_rounds=every, refine_rounds=refine)


def _built(task, scheme="structured", structure="column", policy="server",
           importance="magnitude", schedule=(1, 2, 1, 0, "step"),
           client=("adam", 3e-3)) -> process_lib.FederatedPruningProcess:
    """The process for these settings, traced once per module."""
    key = (scheme, structure, policy, importance, schedule, client)
    if key not in _BUILT:
        begin, end, every, refine, kind = schedule
        pruning = config_lib.PruningConfig(
            scheme=scheme, structure=structure, policy=policy, importance=importance,
            schedule=_schedule(begin, end, every, refine, kind=kind))
        _BUILT[key] = process_lib.build_federated_pruning_process(
            task, pruning, _OPTIMIZERS[client[0]](client[1]),
            tff.learning.optimizers.build_sgdm(1.0))
    return _BUILT[key]


def _datasets(task, round_num, clients=None, repeat=1):
    clients = clients or task.train_client_ids[:3]
    return [task.client_dataset(c, training=True, seed=round_num * 10 + i).repeat(repeat)
            for i, c in enumerate(clients)]


def _client_updates(built, state, data):
    """What each client of the process sends for `state`: its own training,
    run by the process's client work on what the server broadcasts."""
    received = built.to_wire(state.global_model_weights)
    out = built.client_work.next(state.client_work, [received] * len(data), data)
    return out.result


def _masks(built, weights):
    return [np.asarray(weights.non_trainable[i]) for i in built.index.mask_index]


def _kernels(weights, index):
    return {k: np.asarray(weights.trainable[i]) for k, i in zip(index.keys, index.kernel_index)}


def test_pruning_none_equals_tff_fed_avg(micro_task, tff_runtime):
    sgd = tff.learning.optimizers.build_sgdm(0.05)
    server = tff.learning.optimizers.build_sgdm(1.0)
    ours = process_lib.build_federated_pruning_process(
        micro_task, config_lib.PruningConfig(scheme="none"), sgd, server, seed=3)
    fed_avg = tff.learning.algorithms.build_weighted_fed_avg(
        lambda: variable_model.TaskVariableModel(micro_task, micro_task.build_model()),
        client_optimizer_fn=sgd, server_optimizer_fn=server)
    our_state = ours.process.initialize()
    initial = ours.process.get_model_weights(our_state)
    their_state = fed_avg.set_model_weights(fed_avg.initialize(), initial)
    data = _datasets(micro_task, 1)
    our_state = ours.process.next(our_state, data).state
    their_state = fed_avg.next(their_state, data).state
    mine = ours.process.get_model_weights(our_state).trainable
    theirs = fed_avg.get_model_weights(their_state).trainable
    moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(mine, initial.trainable))
    assert moved > 1e-3  # the round really trained
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


# Every scheme, structure, mask policy and importance appears; the policies'
# two mask paths (unit structures, m:n groups) each meet all three policies.
@pytest.mark.parametrize("scheme,structure,policy,importance", [
    ("unstructured", "column", "server", "magnitude"),
    ("block", "column", "client_vote", "magnitude"),
    ("block", "column", "fixed", "taylor"),
    ("m_by_n", "column", "server", "taylor"),
    ("m_by_n", "column", "client_vote", "magnitude"),
    ("m_by_n", "column", "fixed", "magnitude"),
    ("structured", "row", "client_vote", "magnitude"),
    ("structured", "head", "fixed", "magnitude"),
    ("structured", "channel", "server", "taylor"),
    ("structured", "half_column", "server", "magnitude"),
])
def test_clients_train_only_kept_weights_and_rounds_reach_the_target(
        micro_task, tff_runtime, scheme, structure, policy, importance):
    built = _built(micro_task, scheme, structure, policy, importance)
    state = built.process.initialize()
    losses = []
    for r in range(1, 4):
        out = built.process.next(state, _datasets(micro_task, r, repeat=2))
        state = out.state
        train = out.metrics["client_work"]["train"]
        losses.append(float(train["loss_sum"]) / float(train["num_examples"]))
    assert losses[-1] < losses[0], losses

    # The clients' own updates under the final masks (set at round 2): every
    # pruned coordinate of every masked weight (kernels, coupled biases) is
    # exactly zero in each client's delta, so its trained weight stayed at
    # the broadcast zero; kept coordinates did train.
    weights = state.global_model_weights
    weight_masks = wrappers.weight_masks(
        [tf.constant(m) for m in weights.non_trainable], built.index, len(weights.trainable),
        built.decider.pruning.masks_biases)
    updates = _client_updates(built, state, _datasets(micro_task, 4))
    assert len(updates) == 3
    for update in updates:
        delta = [np.asarray(d) for d in update.update["delta"]]
        trained = moved = 0
        for d, m in zip(delta, weight_masks):
            if m is None:
                continue
            m = np.broadcast_to(np.asarray(m), d.shape)
            assert np.all(d[m == 0] == 0)
            trained += int(np.sum(m == 0))
            moved += int(np.sum(d[m > 0] != 0))
        assert trained > 0 and moved > 0

    masks = _masks(built, weights)
    masked = built.process.get_model_weights(state)
    kernels = _kernels(masked, built.index)
    covered = built.decider.covered_keys
    zeros = sum(int(np.sum(kernels[k] == 0)) for k in covered)
    total = sum(kernels[k].size for k in covered)
    # The target, up to one unit/block of rounding per budget layer (m_by_n:
    # the 1-input-channel first conv is excluded, partial groups stay dense).
    assert abs(zeros / total - 0.5) < 0.03, zeros / total
    # The reported sparsity is the same figure (one definition).
    assert float(out.metrics["finalizer"]["sparsity"]) == pytest.approx(zeros / total, abs=1e-3)
    for key, mask in zip(built.index.keys, masks):
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert np.all(kernels[key][mask == 0] == 0)


def test_m_by_n_ramps_up_with_the_schedule(micro_task, tff_runtime):
    # step schedule 1..2: half the target (25%) after round 1, 2:4 after round 2.
    built = _built(micro_task, "m_by_n", "column", "server", "taylor")
    state = built.process.initialize()
    sparsities = []
    for r in (1, 2):
        out = built.process.next(state, _datasets(micro_task, r))
        state = out.state
        sparsities.append(float(out.metrics["finalizer"]["sparsity"]))
    assert sparsities[0] == pytest.approx(0.25, abs=0.02)
    assert sparsities[1] == pytest.approx(0.5, abs=0.02)


def test_refinement_revives_a_pruned_unit_and_fixed_never_does(micro_task, tff_runtime):
    results = {}
    for policy in ("server", "fixed"):
        built = _built(micro_task, "structured", "column", policy,
                       schedule=(1, 1, 1, 2, "constant"), client=("sgd", 1e-3))
        state = built.process.initialize()
        state = built.process.next(state, _datasets(micro_task, 1)).state
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
        state = built.process.next(state, _datasets(micro_task, 2)).state
        new_mask = np.asarray(
            state.global_model_weights.non_trainable[built.index.mask_index[k]])
        results[policy] = new_mask[:, pruned_col]
    assert np.all(results["server"] == 1.0)   # refinement brought it back
    assert np.all(results["fixed"] == 0.0)    # fixed masks never change


def test_client_vote_mask_is_decided_by_disagreeing_clients_votes(micro_task, tff_runtime):
    # Two speakers' Taylor scores disagree, so their proposals differ. The
    # server's mask must be the one their (example-weighted) votes decide,
    # which is not the mask the same clients' mean scores would give.
    built = _built(micro_task, "structured", "column", "client_vote", "taylor",
                   schedule=(1, 1, 1, 0, "step"))
    decider, index = built.decider, built.index
    clients = micro_task.train_client_ids[:2]
    data = [micro_task.client_dataset(c, training=True, seed=7) for c in clients]
    state = built.process.initialize()
    updates = _client_updates(built, state, data)
    # Votes go up bit-packed: one bit per weight.
    kernel_shapes = [index.trainable_shapes[i] for i in index.kernel_index]
    for u in updates:
        assert [np.asarray(v).dtype for v in u.update["vote"]] == [np.uint8] * len(kernel_shapes)
        assert [np.asarray(v).size for v in u.update["vote"]] == [
            bitpack.packed_size(np.prod(s)) for s in kernel_shapes]
    votes = [[bitpack.unpack_mask(v, s).numpy() for v, s in zip(u.update["vote"], kernel_shapes)]
             for u in updates]
    weights = [float(u.update_weight) for u in updates]
    covered = [index.keys.index(k) for k in decider.covered_keys]
    assert any(not np.array_equal(votes[0][i], votes[1][i]) for i in covered)

    out = built.process.next(state, data)
    new = out.state.global_model_weights
    mask = _masks(built, new)
    mean_vote = [sum(w * v[i] for w, v in zip(weights, votes)) / sum(weights)
                 for i in range(len(index.keys))]
    kernels = [tf.constant(new.trainable[i]) for i in index.kernel_index]
    expected = decider.from_votes(
        [tf.constant(v, tf.float32) for v in mean_vote], kernels, 0.5,
        decider.coupled_magnitudes([tf.constant(t) for t in new.trainable], index))
    for i in covered:
        np.testing.assert_array_equal(mask[i], expected[i].numpy(), err_msg=index.keys[i])
    # The votes changed the outcome: mean Taylor scores pick another mask.
    mean_scores = [tf.constant(sum(w * np.asarray(u.update["importance"][j])
                                   for w, u in zip(weights, updates)) / sum(weights))
                   for j in range(len(index.keys))]
    by_scores = decider.from_scores(mean_scores, 0.5)
    assert any(not np.array_equal(mask[i], by_scores[i].numpy()) for i in covered)
    agreement = float(out.metrics["finalizer"]["vote_agreement"])
    assert 0.5 < agreement < 1.0
    # Round 2 updates no mask: no agreement is reported for it (not 1.0).
    later = built.process.next(out.state, data)
    assert not bool(later.metrics["finalizer"]["masks_updated"])
    assert np.isnan(float(later.metrics["finalizer"]["vote_agreement"]))


def test_taylor_prunes_what_magnitude_keeps_on_a_built_case(micro_task, tff_runtime):
    # FFN hidden units J get input columns larger than any other weight of
    # the layer but a zero output row: the largest magnitudes, no effect on
    # the loss (|w * dL/dw| = 0). Magnitude keeps
    # them; Taylor must prune them, and score the rest of the layer above 0
    # (all-zero or magnitude-like scores fail).
    layer_in, layer_out = "block0_ff1_in/kernel", "block0_ff1_out/kernel"
    hidden = [3, 17, 40, 77]
    masks, scores = {}, None
    for importance in ("magnitude", "taylor"):
        built = _built(micro_task, "unstructured", "column", "server", importance,
                       schedule=(1, 1, 1, 0, "constant"), client=("sgd", 1e-6))
        index = built.index
        k_in = index.keys.index(layer_in)
        pos_in = index.kernel_index[k_in]
        pos_out = index.kernel_index[index.keys.index(layer_out)]
        state = built.process.initialize()
        weights = state.global_model_weights
        trainable = [np.asarray(t).copy() for t in weights.trainable]
        kernel = trainable[pos_in]
        kernel[:, hidden] = np.where(kernel[:, hidden] < 0, -3.0, 3.0) * np.abs(kernel).max()
        trainable[pos_out][hidden, :] = 0.0
        state = built.process.set_model_weights(state, tff.learning.models.ModelWeights(
            trainable, [np.asarray(t) for t in weights.non_trainable]))
        data = _datasets(micro_task, 1, clients=micro_task.train_client_ids[:2])
        if importance == "taylor":
            scores = np.mean([np.asarray(u.update["importance"][k_in])
                              for u in _client_updates(built, state, data)], axis=0)
        new = built.process.next(state, data).state.global_model_weights
        masks[importance] = np.asarray(new.non_trainable[index.mask_index[k_in]])
    assert np.all(masks["magnitude"][:, hidden] == 1)
    assert np.all(masks["taylor"][:, hidden] == 0)
    others = np.delete(scores, hidden, axis=1)
    assert np.all(scores[:, hidden] < 1e-2 * np.median(others))
    assert np.median(others) > 0


def test_runs_are_reproducible_bit_for_bit(micro_task, tff_runtime):
    built = _built(micro_task, "unstructured", "column", "server", "magnitude")
    finals = []
    for _ in range(2):
        state = built.process.initialize()
        for r in range(1, 3):
            state = built.process.next(state, _datasets(micro_task, r)).state
        finals.append(built.process.get_model_weights(state))
    for a, b in zip(finals[0].trainable, finals[1].trainable):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_server_optimizer_steps_the_masked_model_whatever_pruned_weights_hold(
        micro_task, tff_runtime):
    # LAMB's step depends on the weights (trust ratio ||w|| / ||r||): it must
    # be the model the clients train, whose pruned weights are zero, not the
    # server's dense copy of them (kept for refinement). Two server states
    # that differ only in the dense values of pruned weights step the kept
    # weights identically; pruned weights keep their dense values.
    built = _built(micro_task, "unstructured", "column", "server", "magnitude")
    update_type = built.finalizer.next.type_signature.parameter[2].member
    assert [name for name, _ in tff.structure.iter_elements(update_type)] == ["delta"]
    finalizer = finalizer_lib.build_pruning_finalizer(
        lamb.build_lamb(0.01), built.weights_type, update_type,
        built.index, built.pruning, built.decider)
    weights = built.process.initialize().global_model_weights
    trainable = [np.asarray(t).copy() for t in weights.trainable]
    non_trainable = [np.asarray(t).copy() for t in weights.non_trainable]
    k = built.index.keys.index("block0_ff1_in/kernel")
    kpos, mpos = built.index.kernel_index[k], built.index.mask_index[k]
    non_trainable[mpos][:, ::2] = 0.0  # half the columns pruned
    rng = np.random.default_rng(0)
    delta = [rng.normal(size=t.shape).astype(np.float32) * 1e-3 for t in trainable]
    delta[kpos][:, ::2] = 0.0  # clients' deltas are masked
    update = collections.OrderedDict(delta=delta)
    stepped = {}
    for pruned_value in (0.0, 100.0):
        dense = [t.copy() for t in trainable]
        dense[kpos][:, ::2] = pruned_value
        state = finalizer.initialize()
        out = finalizer.next(state, tff.learning.models.ModelWeights(dense, non_trainable), update)
        stepped[pruned_value] = [np.asarray(t) for t in out.result.trainable]
    for pos, (a, b) in enumerate(zip(stepped[0.0], stepped[100.0])):
        if pos == kpos:
            a, b = a[:, 1::2], b[:, 1::2]
        np.testing.assert_array_equal(a, b, err_msg=built.index.trainable_keys[pos])
    assert np.all(stepped[100.0][kpos][:, ::2] == 100.0)
    assert not np.array_equal(stepped[0.0][kpos][:, 1::2], trainable[kpos][:, 1::2])
