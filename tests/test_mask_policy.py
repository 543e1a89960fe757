"""Masks on the real (tiny) Conformer's kernels: coupling, allocation, votes."""

import numpy as np
import pytest
import tensorflow as tf

from tasks.asr import model as model_lib
from tasks.asr import text
from tasks.asr import units as asr_units
from tff_prune.model import mask_policy
from tff_prune.model import wrappers
from tff_prune.pruning import config as config_lib


@pytest.fixture(scope="module")
def wrapped():
    tf.keras.utils.set_random_seed(0)
    model = model_lib.build_conformer_ctc(model_lib.ConformerConfig.tiny(), text.VOCAB_SIZE)
    wrapped = wrappers.wrap_for_pruning(
        model, wrappers.select_prunable_layers(model, model_lib.EXCLUDED_FROM_PRUNING))
    return wrapped, wrappers.index_prunable_weights(wrapped)


def _decider(index, **kwargs):
    return mask_policy.MaskDecider(config_lib.PruningConfig(**kwargs), index,
                                   asr_units.ConformerStructure(num_heads=4))


def _random_scores(index, seed=0):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.random(s).astype(np.float32)) for s in index.shapes]


def _masks(index, decider, sparsity=0.5, seed=0):
    masks = decider.from_scores(_random_scores(index, seed), sparsity)
    return {k: m.numpy() for k, m in zip(index.keys, masks)}


def test_column_removes_whole_units_with_incoming_outgoing_and_bias(wrapped):
    _, index = wrapped
    masks = _masks(index, _decider(index, structure="column"))
    ff_in, ff_out = masks["block0_ff1_in/kernel"], masks["block0_ff1_out/kernel"]
    removed = np.all(ff_in == 0, axis=0)
    assert 0 < removed.sum() < removed.size
    # A column is either entirely kept or entirely removed ...
    assert np.all(ff_in.min(axis=0) == ff_in.max(axis=0))
    # ... and its outgoing row goes with it, and so does its bias.
    np.testing.assert_array_equal(np.all(ff_out == 0, axis=1), removed)
    bias = wrappers.weight_masks(_non_trainable_with(index, masks), index,
                                 len(index.trainable_keys), mask_biases=True)
    bias_mask = bias[index.bias_index[index.keys.index("block0_ff1_in/kernel")]].numpy()
    np.testing.assert_array_equal(bias_mask == 0, removed)
    # Q and K lose the same dimensions (the q.k product).
    np.testing.assert_array_equal(np.all(masks["block0_mhsa_query/kernel"] == 0, axis=0),
                                  np.all(masks["block0_mhsa_key/kernel"] == 0, axis=0))


def _non_trainable_with(index, masks):
    """A non_trainable list holding `masks` at the wrappers' mask positions."""
    size = max(max(index.mask_index), max(index.step_index)) + 1
    values = [tf.zeros([])] * size
    for key, pos in zip(index.keys, index.mask_index):
        values[pos] = tf.constant(masks[key])
    return values


def test_row_removes_input_rows_with_their_producer_column(wrapped):
    _, index = wrapped
    masks = _masks(index, _decider(index, structure="row"))
    ff_in, ff_out = masks["block0_ff2_in/kernel"], masks["block0_ff2_out/kernel"]
    removed_rows = np.all(ff_out == 0, axis=1)
    assert 0 < removed_rows.sum()
    np.testing.assert_array_equal(np.all(ff_in == 0, axis=0), removed_rows)


def test_head_removes_whole_heads_in_q_k_v_and_output(wrapped):
    _, index = wrapped
    masks = _masks(index, _decider(index, structure="head"))
    dh = 64 // 4
    q = masks["block1_mhsa_query/kernel"]
    out = masks["block1_mhsa_output/kernel"]
    heads_removed = [np.all(q[:, h * dh:(h + 1) * dh] == 0) for h in range(4)]
    assert any(heads_removed) and not all(heads_removed)
    for h in range(4):
        cols = slice(h * dh, (h + 1) * dh)
        for name in ("query", "key", "value"):
            m = masks[f"block1_mhsa_{name}/kernel"][:, cols]
            assert np.all(m == 0) if heads_removed[h] else np.all(m == 1)
        assert np.all(out[cols, :] == 0) if heads_removed[h] else np.all(out[cols, :] == 1)
    # Feed-forward kernels are not heads: untouched.
    assert np.all(masks["block1_ff1_in/kernel"] == 1)


def test_channel_removes_glu_pairs_and_pointwise_rows(wrapped):
    _, index = wrapped
    masks = _masks(index, _decider(index, structure="channel"))
    pw_in = masks["block0_conv_pointwise_in/kernel"]
    pw_out = masks["block0_conv_pointwise_out/kernel"]
    channels = pw_out.shape[0]
    removed = np.all(pw_out == 0, axis=1)
    assert 0 < removed.sum() < channels
    np.testing.assert_array_equal(np.all(pw_in[:, :channels] == 0, axis=0), removed)
    np.testing.assert_array_equal(np.all(pw_in[:, channels:] == 0, axis=0), removed)


def test_adaptive_allocation_differs_per_layer_and_meets_target(wrapped):
    _, index = wrapped
    decider = _decider(index, scheme="unstructured", distribution="adaptive")
    # Layers with larger weights matter more: scale scores per layer.
    scores = [tf.constant(np.random.default_rng(i).random(s).astype(np.float32) * (1 + i))
              for i, s in enumerate(index.shapes)]
    masks = [m.numpy() for m in decider.from_scores(scores, 0.6)]
    per_layer = [1 - m.mean() for m in masks]
    sizes = np.array([m.size for m in masks])
    assert np.ptp(per_layer) > 0.05
    assert np.average(per_layer, weights=sizes) == pytest.approx(0.6, abs=1e-3)


def test_m_by_n_masks_are_two_of_four(wrapped):
    _, index = wrapped
    masks = _masks(index, _decider(index, scheme="m_by_n"))
    for key, m in masks.items():
        x = np.moveaxis(m, -2, -1)
        width = x.shape[-1] - x.shape[-1] % 4
        groups = x[..., :width].reshape(-1, 4)
        assert np.all(groups.sum(axis=1) == 2), key


def test_client_vote_majority_wins(wrapped):
    _, index = wrapped
    decider = _decider(index, structure="column", policy="client_vote")
    majority = decider.from_scores(_random_scores(index, 1), 0.5)
    minority = decider.from_scores(_random_scores(index, 2), 0.5)
    # Example-weighted mean of three client masks: two agree.
    votes = [(2 * a + b) / 3 for a, b in zip(majority, minority)]
    server = decider.from_votes(votes, _random_scores(index, 3), 0.5)
    for a, b in zip(server, majority):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Clients disagreed somewhere: agreement is below 1, but the majority
    # (2 of 3) always matches, so it stays above 2/3.
    assert 2 / 3 <= float(decider.agreement(votes, server)) < 1.0
    assert float(decider.agreement(majority, majority)) == pytest.approx(1.0)


def test_taylor_differs_from_magnitude_when_a_large_weight_has_no_effect(wrapped):
    _, index = wrapped
    decider = _decider(index, scheme="unstructured")
    k = index.keys.index("block0_ff1_in/kernel")
    weights = [tf.ones(s) for s in index.shapes]
    grads = [tf.ones(s) for s in index.shapes]
    w = np.ones(index.shapes[k], np.float32)
    w[0, 0] = 50.0                       # large weight ...
    g = np.ones(index.shapes[k], np.float32)
    g[0, 0] = 0.0                        # ... with no effect on the loss
    weights[k], grads[k] = tf.constant(w), tf.constant(g)
    magnitude = decider.from_scores([tf.abs(x) for x in weights], 0.5)[k].numpy()
    taylor = decider.from_scores([tf.abs(x * y) for x, y in zip(weights, grads)], 0.5)[k].numpy()
    assert magnitude[0, 0] == 1.0 and taylor[0, 0] == 0.0


def test_wrapper_call_masks_the_kernel_and_builds_no_tfmot_schedule_graph():
    # The wrapper keeps tfmot's name and weights = weights * mask on every
    # call, but not its per-step schedule (a step increment and a conditional
    # top-k mask update per layer, which cannot fire under ServerDrivenSchedule).
    inputs = tf.keras.Input([5, 8])
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(6, name="dense")(inputs))
    wrapped = wrappers.wrap_for_pruning(model, ["dense"])
    layer = wrapped.get_layer("prune_low_magnitude_dense")
    assert isinstance(layer, wrappers.ServerMaskedPruneLowMagnitude)
    assert wrappers.index_prunable_weights(wrapped).keys == ("dense/kernel",)
    kernel_var, mask_var, _ = layer.pruning_vars[0]
    mask = np.ones(mask_var.shape, np.float32)
    mask[..., ::2] = 0.0
    mask_var.assign(mask)
    layer.pruning_step.assign(7)
    x = tf.random.stateless_normal([2, 5, 8], seed=[1, 2])

    @tf.function
    def forward(x):
        return wrapped(x, training=True)

    graph = forward.get_concrete_function(x).graph
    op_types = {op.type for op in graph.get_operations()}
    assert not op_types & {"If", "StatelessIf", "TopKV2", "AssignAddVariableOp"}, op_types
    out = forward(x)
    kernel = kernel_var.numpy()
    assert np.all(kernel[..., ::2] == 0.0)
    expected = tf.matmul(x, kernel * mask) + layer.layer.bias
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    assert int(layer.pruning_step.numpy()) == 7
