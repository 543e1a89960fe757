"""Compact-model rounds on the micro model, through the real TFF runtime.

One process (structured column pruning to 50% after round 1) is traced once;
the tests read the compact round's own parts: the model clients receive, the
deltas they send, and the server's scatter of them into its dense state.
"""

import gc
import types
import weakref

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from conftest import computation_op_types, loop_dataset_options
from tasks.asr import compaction
from tasks.asr import text
from tff_prune.federated import client_data
from tff_prune.federated import client_model
from tff_prune.federated import compact_rounds
from tff_prune.federated import process as process_lib
from tff_prune.federated import wire
from tff_prune.model import wrappers
from tff_prune.program import accounting
from tff_prune.pruning import config as config_lib
from tff_prune.pruning import schedule as schedule_lib

_CACHE = {}


def _datasets(task, round_num, repeat=1):
    return [task.client_dataset(c, training=True, seed=round_num * 10 + i).repeat(repeat)
            for i, c in enumerate(task.train_client_ids[:3])]


@pytest.fixture(scope="module")
def switched(micro_task, tff_runtime):
    """(built, rounds, state): the state right after the first mask update."""
    if "switched" not in _CACHE:
        pruning = config_lib.PruningConfig(
            scheme="structured", structure="column",
            schedule=schedule_lib.PruningSchedule(
                kind="constant", target_sparsity=0.5, begin_round=1, end_round=1,
                every_rounds=1, refine_rounds=0))
        built = process_lib.build_federated_pruning_process(
            # SGD: Adam would turn the rounding noise of gradients that are
            # zero in exact arithmetic (the key bias: softmax ignores it) into
            # full-size steps, in either model.
            micro_task, pruning, tff.learning.optimizers.build_sgdm(0.1),
            tff.learning.optimizers.build_sgdm(1.0))
        rounds = compact_rounds.CompactRounds(built, compaction.ConformerCompactor(
            micro_task.model_config, text.VOCAB_SIZE))
        state = built.process.initialize()
        assert rounds.plan(state) is None  # nothing pruned yet: a masked round
        state = rounds.next(state, _datasets(micro_task, 1)).state
        _CACHE["switched"] = (built, rounds, state)
    return _CACHE["switched"]


def _batch(task):
    return next(iter(task.client_dataset(task.test_client_ids[0], training=False)))


def test_compact_model_computes_the_masked_models_logits(micro_task, switched):
    built, rounds, state = switched
    plan = rounds.plan(state)
    assert plan is not None
    arch = rounds.architecture(plan)
    dense_params = sum(int(np.prod(s)) for s in built.index.trainable_shapes)
    compact_params = sum(g.size for g in plan.gather)
    assert compact_params < 0.8 * dense_params  # physically smaller

    masked = built.model_fn()
    built.process.get_model_weights(state).assign_weights_to(masked)
    received = arch.wire(state.global_model_weights, plan.tensors())
    compact = arch.model_fn()
    weights = client_model.from_wire(received, arch.index,
                                     wrappers.model_weights_type(compact), sparse=True)
    weights.assign_weights_to(compact)
    batch = _batch(micro_task)
    features, lengths = batch[0]["features"], batch[0]["feature_lengths"]
    diff = compaction.max_logit_difference(masked, compact, features, lengths)
    assert diff < 1e-4, diff


def test_scattered_compact_delta_is_the_masked_delta_exactly(micro_task, switched):
    built, rounds, state = switched
    plan = rounds.plan(state)
    data = _datasets(micro_task, 2)
    # The masked round's own client work on the same state and data.
    received = built.to_wire(state.global_model_weights)
    masked_updates = built.client_work.next(state.client_work, [received] * len(data),
                                            data).result
    arch = rounds.architecture(plan)
    compact_received = arch.wire(state.global_model_weights, plan.tensors())
    compact_updates = arch.client_work.next(state.client_work,
                                            [compact_received] * len(data), data).result
    source = plan.source
    shapes = built.index.trainable_shapes
    for masked_update, compact_update in zip(masked_updates, compact_updates):
        delta = [np.asarray(d) for d in masked_update.update["delta"]]
        # Gathering the masked delta into the compact layout and scattering it
        # back loses nothing: every coordinate the masked client trained is in
        # the compact model.
        gathered = compact_rounds.gather_compact(delta, plan.tensors(), source)
        back = compact_rounds.scatter_compact(gathered, plan.tensors(), source, shapes)
        for a, b in zip(back, delta):
            np.testing.assert_array_equal(np.asarray(a), b)
        # And the compact client trained what the masked one did.
        scattered = compact_rounds.scatter_sent_delta(
            [tf.constant(d) for d in compact_update.update["delta"]], plan.tensors(),
            arch.index.kernel_index, source, shapes)
        largest = max(float(np.max(np.abs(d))) for d in delta)
        assert largest > 1e-2
        masks = wrappers.weight_masks(
            [tf.constant(t) for t in state.global_model_weights.non_trainable], built.index,
            len(delta), built.pruning.masks_biases)
        assert sum(int(np.sum(np.asarray(m) == 0)) for m in masks if m is not None) > 0
        for a, b, mask in zip(scattered, delta, masks):
            a = np.asarray(a)
            # Neither client moved a pruned coordinate: placement is exact ...
            if mask is not None:
                pruned = np.broadcast_to(np.asarray(mask) == 0, a.shape)
                assert not np.any(a[pruned]) and not np.any(b[pruned])
            # ... and each kept one moved by the same amount, up to float32
            # summation order: the compact matmuls add fewer (zero) terms, so
            # entries differ by rounding relative to the update's largest sums
            # (|d| up to ~230 here; the q/k kernels, |d| ~ 0.01, move by
            # ~1.5e-5; a kept entry's update can round to exactly 0 in one
            # model and not in the other); a wrong gather or scatter differs
            # by the entries themselves.
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * largest)
        assert compact_update.update_weight == masked_update.update_weight


def test_compact_round_moves_fewer_bytes_and_trains(micro_task, switched):
    built, rounds, state = switched
    plan = rounds.plan(state)
    arch = rounds.architecture(plan)
    down = wire.type_bytes(arch.client_work.next.type_signature.parameter[1])
    up = wire.type_bytes(arch.client_work.next.type_signature.result.result)
    masked_down = wire.type_bytes(built.client_work.next.type_signature.parameter[1])
    masked_up = wire.type_bytes(built.client_work.next.type_signature.result.result)
    assert down < 0.8 * masked_down and up < 0.8 * masked_up
    output = rounds.next(state, _datasets(micro_task, 2))
    assert float(output.metrics["client_work"]["train"]["num_examples"]) > 0
    before = [np.asarray(t) for t in state.global_model_weights.trainable]
    after = [np.asarray(t) for t in output.state.global_model_weights.trainable]
    assert any(np.any(a != b) for a, b in zip(after, before))


def _flat(value) -> list:
    return tf.nest.flatten(tff.structure.to_odict_or_tuple(value)
                           if isinstance(value, tff.structure.Struct) else value)


def _nbytes(value) -> int:
    return sum(np.asarray(t).nbytes for t in _flat(value))


def test_reported_bytes_are_the_bytes_of_the_values_that_cross_the_wire(micro_task, switched):
    # `round_wire_bytes` (what metrics.csv records) against the values
    # themselves: what the server broadcasts and what each client returns,
    # in a masked round and in a compact one.
    built, rounds, state = switched
    plan = rounds.plan(state)
    arch = rounds.architecture(plan)
    data = _datasets(micro_task, 3)[:1]
    for client_work, received in (
            (built.client_work, built.to_wire(state.global_model_weights)),
            (arch.client_work, arch.wire(state.global_model_weights, plan.tensors()))):
        down, up = accounting.round_wire_bytes(client_work)
        assert _nbytes(received) == down
        result = client_work.next(state.client_work, [received], data).result[0]
        assert _nbytes((result.update, result.update_weight)) == up
    # Dense FedAvg's figure: the full model's float32 weights.
    assert accounting.dense_bytes_per_client(built.index) == 4 * sum(
        int(np.prod(s)) for s in built.index.trainable_shapes)


@pytest.mark.parametrize("scheme,importance,policy", [
    ("unstructured", "taylor", "server"),
    ("structured", "magnitude", "client_vote"),
])
def test_clients_score_only_before_mask_updates_and_training_is_unchanged(
        micro_task, tff_runtime, scheme, importance, policy):
    # Taylor scores and votes decide only the mask update that follows a
    # round: the other rounds run sparse, without them, and the run must be
    # the process's own run bit for bit.
    pruning = config_lib.PruningConfig(
        scheme=scheme, structure="column", importance=importance, policy=policy,
        schedule=schedule_lib.PruningSchedule(
            kind="constant", target_sparsity=0.5, begin_round=2, end_round=2,
            every_rounds=1, refine_rounds=0))
    built = process_lib.build_federated_pruning_process(
        micro_task, pruning, tff.learning.optimizers.build_sgdm(0.1),
        tff.learning.optimizers.build_sgdm(1.0))
    rounds = compact_rounds.CompactRounds(
        built, compact_rounds.FullSizeModel(micro_task.build_model))
    score_field = "importance" if importance == "taylor" else "vote"
    reference = ours = built.process.initialize()
    for round_num in (1, 2, 3):
        client_work = rounds.client_work_for(ours)
        sent = dict(tff.structure.iter_elements(
            client_work.next.type_signature.result.result.member.update))
        assert (score_field in sent) == (round_num == 2), round_num
        if round_num != 2:
            assert client_work is not built.client_work
            _, up = accounting.round_wire_bytes(client_work)
            assert up < wire.type_bytes(built.client_work.next.type_signature.result.result)
        data = _datasets(micro_task, round_num)
        ours = rounds.next(ours, data).state
        reference = built.process.next(reference, data).state
    for a, b in zip(tf.nest.flatten(ours.global_model_weights),
                    tf.nest.flatten(reference.global_model_weights)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    masks = [np.asarray(ours.global_model_weights.non_trainable[i])
             for i in built.index.mask_index]
    assert any(np.any(m == 0) for m in masks)  # the update round pruned


def _with_more_columns_pruned(state, built, layer: str, count: int):
    """`state`'s weights with `count` more kept columns of `layer`'s kernel
    masked (other widths, so another compact architecture)."""
    weights = state.global_model_weights
    non_trainable = [np.array(t) for t in weights.non_trainable]
    for k, kernel_pos in enumerate(built.index.kernel_index):
        if built.index.trainable_keys[kernel_pos].startswith(layer + "/"):
            mask = non_trainable[built.index.mask_index[k]]
            kept = np.flatnonzero(mask.any(axis=0))
            mask[:, kept[:count]] = 0
            break
    else:
        raise AssertionError(f"no kernel of {layer}")
    # All a plan reads of a state.
    return types.SimpleNamespace(
        global_model_weights=weights._replace(non_trainable=non_trainable))


def test_client_loops_read_their_data_by_iterator_without_tf_datas_rewrites(switched):
    # tf.data rewrites a dataset's graph (with the whole training step in its
    # function library) every time a loop over it starts, and a loop over
    # the dataset itself (a scan) has its step function instantiated anew:
    # in TFF's worker, for every client of every round. The full-size
    # round's clients and the compact round's read theirs through an
    # iterator in a while loop, read ahead, with the default rewrites off.
    built, rounds, state = switched
    for computation in (built.process.next, rounds.architecture(rounds.plan(state)).next):
        options = loop_dataset_options(computation)
        assert len(options) == 1, options  # the one client loop
        assert options[0].optimization_options.HasField("apply_default_optimizations")
        assert not options[0].optimization_options.apply_default_optimizations
        ops = computation_op_types(computation)
        assert {"IteratorGetNextAsOptional", "PrefetchDataset"} <= ops, ops
        assert not ops & {"ReduceDataset", "ScanDataset"}, ops & {"ReduceDataset", "ScanDataset"}


def test_only_the_latest_architectures_stay_built(micro_task, switched, tff_runtime):
    # Every mask update with new widths builds a compact architecture (traced
    # computations, Keras models, TFF's compiled forms once run). The rounds
    # keep the latest (KEPT_ARCHITECTURES), and nothing else in the process
    # keeps an older one alive: not TFF's compile cache, not the client-data
    # compositions, not the FLOPs accounting.
    built, rounds, state = switched
    first = rounds.architecture(rounds.plan(state))
    first.wire(state.global_model_weights, rounds.plan(state).tensors())  # compiled and cached
    inputs = client_data.ClientInputs(micro_task, training=True)
    inputs.compose(first.next)
    flops = accounting.ClientStepFlops(micro_task, seed=0)
    assert flops(first.model_fn) > 0
    held = [weakref.ref(x) for x in (first, first.next, first.wire, first.model_fn)]
    del first
    widths = set()
    for count in (1, 2):
        plan = rounds.plan(_with_more_columns_pruned(state, built, "block0_ff1_in", count))
        widths.add(plan.widths)
        rounds.architecture(plan)
        assert rounds.kept_architectures <= compact_rounds.KEPT_ARCHITECTURES
    assert len(widths) == 2
    gc.collect()
    assert [ref() for ref in held] == [None] * len(held)
    live = [o for o in gc.get_objects() if isinstance(o, compact_rounds.CompactArchitecture)]
    assert len(live) <= compact_rounds.KEPT_ARCHITECTURES
    assert rounds.kept_architectures == compact_rounds.KEPT_ARCHITECTURES
    assert rounds.forgotten_architectures >= 1
    # The worker lets go of what it compiled (its executors are disposed of);
    # the next call compiles again and computes the same.
    last = rounds.architecture(plan)
    before = last.wire(state.global_model_weights, plan.tensors())
    assert tff_runtime.release_worker_state() >= 1
    assert tff_runtime.release_worker_state() == 0  # nothing run since
    after = last.wire(state.global_model_weights, plan.tensors())
    for a, b in zip(_flat(before), _flat(after), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
