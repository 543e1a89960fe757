"""Masks, allocation, m:n and block sparsity, importance and stats (tff_prune.pruning)."""

import functools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_utils

from tasks.asr import units as cu
from tff_prune.pruning import importance, masks, stats, units
from tff_prune.pruning import structures

HEADS = 4
SPARSITIES = (0.3, 0.5, 0.8)
ALL_SCHEMES = [("unstructured", None), ("block", None)] + [("structured", s) for s in structures.STRUCTURES]


def tiny_shapes(depthwise_rank=3):
    return cu.conformer_weight_shapes(d_model=16, num_blocks=2, ff_dim=64, conv_channels=16, conv_kernel=7,
                                      freq_positions=19, subsample_channels=8, vocab_size=10,
                                      depthwise_rank=depthwise_rank)


SHAPES = tiny_shapes()
LAYERS = [k.rsplit("/", 1)[0] for k in SHAPES if k.endswith("kernel")]


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    # Per-layer scales and tails differ, as in a trained model.
    out = {}
    for i, (k, shape) in enumerate(SHAPES.items()):
        w = rng.standard_normal(shape) if i % 3 else rng.laplace(size=shape) ** 3
        out[k] = (w * 10.0 ** (i % 4 - 2)).astype(np.float32)
    return out


WEIGHTS = _weights()


@functools.lru_cache(maxsize=None)
def structure(scheme, name):
    return cu.build_unit_structure(SHAPES, scheme, name, LAYERS, HEADS)


def magnitude(s, weights=WEIGHTS):
    return importance.magnitude_scores({k: weights[k] for k in s.unit_ids})


def np_masks(m):
    return {k: v.numpy() for k, v in m.items()}


def kernel_layer_of(s):
    """Budget layer of each covered kernel."""
    return {k: int(s.unit_layer[s.unit_ids[k].flat[0]]) for k in s.kernel_keys}


# ----------------------------------------------------------------------------- sparsity


@pytest.mark.parametrize("scheme,name", ALL_SCHEMES)
@pytest.mark.parametrize("distribution", masks.DISTRIBUTIONS)
def test_measured_sparsity_matches_target(scheme, name, distribution):
    s = structure(scheme, name)
    layer_of = kernel_layer_of(s)
    for sparsity in SPARSITIES:
        keep = masks.unit_keep(magnitude(s), s, sparsity, distribution).numpy()
        m = np_masks(masks.masks_from_unit_keep(keep, s))
        assert set(m) == set(s.unit_ids)
        for k, v in m.items():
            assert v.dtype == np.float32 and v.shape == s.unit_ids[k].shape
            assert np.isin(v, (0.0, 1.0)).all(), k
        removed = np.zeros(s.num_layers)
        for k in s.kernel_keys:
            removed[layer_of[k]] += (m[k] == 0).sum()
        if distribution == "uniform":
            groups = [(np.array([layer]), s.layer_param_count[layer]) for layer in range(s.num_layers)]
        else:
            groups = [(np.arange(s.num_layers), s.total_params)]
        for layers, params in groups:
            in_group = np.isin(s.unit_layer, layers)
            step = s.unit_param_count[in_group].max()  # rounding to whole units
            got, want = removed[layers].sum(), sparsity * params
            n_protected = np.unique(s.unit_group[in_group]).size
            capped = (keep[in_group] == 0).sum() == in_group.sum() - n_protected
            assert abs(got - want) <= step or (capped and got < want), (s.name, distribution, sparsity, layers)
        # Overall: within one unit per budget (or at the cap).
        steps = sum(s.unit_param_count[np.isin(s.unit_layer, layers)].max() for layers, _ in groups)
        total = removed.sum() / s.total_params
        assert abs(total - sparsity) <= steps / s.total_params or total < sparsity


@pytest.mark.parametrize("scheme,name", ALL_SCHEMES)
@pytest.mark.parametrize("distribution", masks.DISTRIBUTIONS)
def test_never_removes_a_whole_layer(scheme, name, distribution):
    s = structure(scheme, name)
    m = np_masks(masks.compute_masks(magnitude(s), s, 0.99, distribution))
    for k in s.kernel_keys:
        assert m[k].sum() > 0, k


def test_sparsity_zero_keeps_everything():
    s = structure("structured", "column")
    m = np_masks(masks.compute_masks(magnitude(s), s, 0.0, "global"))
    assert all(v.all() for v in m.values())


# ----------------------------------------------------------------------------- coupled units


def test_column_removes_ff_units_consistently():
    s = structure("structured", "column")
    m = np_masks(masks.compute_masks(magnitude(s), s, 0.5, "global"))
    some_removed = 0
    for b in range(2):
        for ff in ("ff1", "ff2"):
            k_in, b_in, k_out = (m[f"block{b}_{ff}_in/kernel"], m[f"block{b}_{ff}_in/bias"],
                                 m[f"block{b}_{ff}_out/kernel"])
            col_zero = (k_in == 0).all(axis=0)
            assert ((k_in == 0).any(axis=0) == col_zero).all()  # whole columns only
            assert (col_zero == (b_in == 0)).all()
            assert (col_zero == (k_out == 0).all(axis=1)).all()
            some_removed += col_zero.sum()
    assert some_removed > 0


def test_row_removes_ff_units_consistently():
    s = structure("structured", "row")
    m = np_masks(masks.compute_masks(magnitude(s), s, 0.5, "uniform"))
    k_in, b_in, k_out = (m["block1_ff2_in/kernel"], m["block1_ff2_in/bias"], m["block1_ff2_out/kernel"])
    row_zero = (k_out == 0).all(axis=1)
    assert ((k_out == 0).any(axis=1) == row_zero).all()
    assert (row_zero == (b_in == 0)).all() and (row_zero == (k_in == 0).all(axis=0)).all()
    assert 0 < row_zero.sum() < 64


def test_head_zeroes_whole_heads():
    s = structure("structured", "head")
    m = np_masks(masks.compute_masks(magnitude(s), s, 0.5, "uniform"))
    dh = 16 // HEADS
    for b in range(2):
        kept = []
        for h in range(HEADS):
            cols = slice(h * dh, (h + 1) * dh)
            parts = [m[f"block{b}_mhsa_{p}/kernel"][:, cols] for p in ("query", "key", "value")]
            parts += [m[f"block{b}_mhsa_{p}/bias"][cols] for p in ("query", "key", "value")]
            parts.append(m[f"block{b}_mhsa_output/kernel"][cols, :])
            values = np.unique(np.concatenate([p.ravel() for p in parts]))
            assert values.size == 1
            kept.append(values[0])
        assert sum(kept) == HEADS // 2  # uniform 0.5: two of four heads per block


def test_channel_zeroes_whole_channels():
    s = structure("structured", "channel")
    m = np_masks(masks.compute_masks(magnitude(s), s, 0.5, "global"))
    C, C2 = 16, 8
    for b in range(2):
        p = f"block{b}_conv_"
        for c in range(C):
            parts = [m[p + "pointwise_in/kernel"][:, [c, c + C]], m[p + "pointwise_in/bias"][[c, c + C]],
                     m[p + "depthwise/depthwise_kernel"][:, c], m[p + "depthwise/bias"][c:c + 1],
                     m[p + "pointwise_out/kernel"][c]]
            assert np.unique(np.concatenate([x.ravel() for x in parts])).size == 1
    c1, c2, dense = m["subsample_conv1/kernel"], m["subsample_conv2/kernel"], m["subsample_dense/kernel"]
    for c in range(C2):
        if (c1[..., c] == 0).all():
            assert (c2[:, :, c, :] == 0).all() and m["subsample_conv1/bias"][c] == 0
        if (c2[..., c] == 0).all():
            assert (dense[np.arange(19) * C2 + c] == 0).all()
    assert sum((m[k] == 0).sum() for k in s.kernel_keys) > 0


# ----------------------------------------------------------------------------- allocation


def _per_kernel_sparsity(m, keys):
    return np.array([(m[k] == 0).mean() for k in keys])


def test_adaptive_differs_per_layer_and_meets_the_target():
    s = structure("unstructured", None)
    m = np_masks(masks.compute_masks(magnitude(s), s, 0.6, "adaptive"))
    per_layer = _per_kernel_sparsity(m, s.kernel_keys)
    sizes = np.array([m[k].size for k in s.kernel_keys])
    assert per_layer.max() - per_layer.min() > 0.2
    assert abs((per_layer * sizes).sum() / sizes.sum() - 0.6) <= 1.0 / sizes.sum()
    uniform = _per_kernel_sparsity(np_masks(masks.compute_masks(magnitude(s), s, 0.6, "uniform")),
                                   s.kernel_keys)
    assert np.abs(uniform - 0.6).max() < 0.02


def test_adaptive_is_invariant_to_layer_scale_but_global_is_not():
    s = structure("unstructured", None)
    scores = {k: v.numpy() for k, v in magnitude(s).items()}
    scaled = dict(scores)
    scaled["block0_ff1_in/kernel"] = scores["block0_ff1_in/kernel"] * 1e4
    for dist, same in (("adaptive", True), ("global", False)):
        a = np_masks(masks.compute_masks(scores, s, 0.5, dist))
        b = np_masks(masks.compute_masks(scaled, s, 0.5, dist))
        assert all((a[k] == b[k]).all() for k in a) == same, dist


def test_global_uses_one_ranking():
    shapes = {"a/kernel": (4, 8), "b/kernel": (4, 8)}
    s = units.unstructured(shapes, ["a", "b"])
    scores = {"a/kernel": np.full((4, 8), 1.0), "b/kernel": np.full((4, 8), 2.0)}
    scores["a/kernel"][0, 0] = scores["b/kernel"][0, 0] = 9.0  # the protected best units
    m = np_masks(masks.compute_masks(scores, s, 0.5, "global"))
    assert (m["a/kernel"] == 0).sum() == 31 and (m["b/kernel"] == 0).sum() == 1
    m = np_masks(masks.compute_masks(scores, s, 0.5, "uniform"))
    assert (m["a/kernel"] == 0).sum() == 16 and (m["b/kernel"] == 0).sum() == 16


def _kinds_removed(keep, s, layer):
    """Removed fraction of each anchor group (kind of unit) in budget layer ``layer``."""
    in_layer = s.unit_layer == layer
    return {int(g): float((keep[in_layer & (s.unit_group == g)] == 0).mean())
            for g in np.unique(s.unit_group[in_layer])}


def test_uniform_removes_the_same_fraction_of_each_kind_of_unit():
    # The subsampling's budget layer holds three kinds of unit: the output
    # channels of subsample_conv1 (with subsample_conv2's input rows) and of
    # subsample_conv2 (with subsample_dense's rows, via the flatten), and
    # subsample_dense's own columns. Make the dense columns' scores 100x
    # smaller: ranked together by score, uniform would remove dense columns
    # only; it removes the same fraction of every kind.
    s = structure("structured", "column")
    scores = {k: v.numpy() for k, v in magnitude(s).items()}
    scores["subsample_dense/kernel"] = scores["subsample_dense/kernel"] / 100.0
    layer = int(s.unit_layer[s.unit_ids["subsample_conv2/kernel"].flat[0]])
    assert layer == int(s.unit_layer[s.unit_ids["subsample_dense/kernel"][0, 0]])
    for sparsity in (0.3, 0.5, 0.8):
        keep = masks.unit_keep(scores, s, sparsity, "uniform").numpy()
        fractions = list(_kinds_removed(keep, s, layer).values())
        assert len(fractions) == 3 and min(fractions) > 0.0, (sparsity, fractions)
        # Equal up to one unit of the smallest kind (8 channels, 16 columns).
        assert max(fractions) - min(fractions) <= 1.0 / 8, (sparsity, fractions)
        # Within each kind the lowest scores go first.
        score = masks.unit_scores(scores, s).numpy()
        for group in np.unique(s.unit_group[s.unit_layer == layer]):
            kind = s.unit_group == group
            assert score[kind & (keep == 0)].max() <= score[kind & (keep == 1)].min()


def test_uniform_with_one_kind_per_budget_layer_is_the_score_order():
    # Where every budget layer holds one kind, the rank keys cut exactly where
    # the scores do (ties included: lower unit index first), so masks are
    # computed from the scores directly.
    s = units.unstructured({"a/kernel": (4, 6), "b/kernel": (3, 5)}, ["a", "b"])
    rng = np.random.default_rng(3)
    scores = {"a/kernel": rng.integers(0, 4, (4, 6)).astype(np.float32),  # many ties
              "b/kernel": rng.standard_normal((3, 5)).astype(np.float32) * 100}
    score = masks.unit_scores(scores, s)
    for sparsity in (0.2, 0.5, 0.9):
        by_score = masks.select_dropped(score, s, sparsity, per_layer=True).numpy()
        rank_keys = masks.group_rank_keys(score, s)
        by_rank = masks.select_dropped(rank_keys, s, sparsity, per_layer=True).numpy()
        assert (by_score == by_rank).all(), sparsity


def test_ties_are_broken_by_unit_index():
    s = units.unstructured({"a/kernel": (2, 4)}, ["a"])
    scores = {"a/kernel": np.ones((2, 4), np.float32)}
    first = masks.compute_masks(scores, s, 0.5, "uniform")["a/kernel"].numpy()
    assert first.ravel().tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert (masks.compute_masks(scores, s, 0.5, "uniform")["a/kernel"].numpy() == first).all()


def test_unknown_distribution():
    s = structure("unstructured", None)
    with pytest.raises(ValueError, match="distribution"):
        masks.compute_masks(magnitude(s), s, 0.5, "erk")


# ----------------------------------------------------------------------------- graph mode


@pytest.mark.parametrize("scheme,name,distribution", [
    ("structured", "column", "adaptive"), ("unstructured", None, "uniform"), ("block", None, "global"),
    ("structured", "channel", "uniform")])
def test_works_inside_tf_function_with_tensor_sparsity(scheme, name, distribution):
    s = structure(scheme, name)
    weights = {k: tf.constant(WEIGHTS[k]) for k in s.unit_ids}

    @tf.function
    def fn(w, sparsity):
        return masks.compute_masks(importance.magnitude_scores(w), s, sparsity, distribution)

    kept = []
    for sparsity in (0.3, 0.8, 0.55):
        graph = np_masks(fn(weights, tf.constant(sparsity)))
        eager = np_masks(masks.compute_masks(magnitude(s), s, sparsity, distribution))
        assert set(graph) == set(eager) == set(s.unit_ids)
        assert all((graph[k] == eager[k]).all() for k in eager)
        kept.append(sum(graph[k].sum() for k in s.kernel_keys))
    # One trace served all three sparsities: the sparsity is a tensor input of
    # the graph, not a constant baked in when it was traced ...
    assert fn.experimental_get_tracing_count() == 1
    # ... and the graph really reads it: more sparsity, fewer kept weights.
    assert kept[0] > kept[2] > kept[1]
    concrete = fn.get_concrete_function(weights, tf.constant(0.5))
    assert fn.experimental_get_tracing_count() == 1
    np_concrete = np_masks(concrete(weights, tf.constant(0.65)))
    eager = np_masks(masks.compute_masks(magnitude(s), s, 0.65, distribution))
    assert all((np_concrete[k] == eager[k]).all() for k in eager)
    # Also builds in a plain v1 graph, as TFF's tensorflow computations do.
    with tf.Graph().as_default():
        placeholders = {k: tf.compat.v1.placeholder(tf.float32, WEIGHTS[k].shape) for k in s.unit_ids}
        out = masks.compute_masks(importance.magnitude_scores(placeholders), s,
                                  tf.compat.v1.placeholder(tf.float32, []), distribution)
        assert set(out) == set(s.unit_ids)


# ----------------------------------------------------------------------------- m:n


def test_m_by_n_is_valid_2_of_4_everywhere():
    shapes = tiny_shapes(depthwise_rank=4)
    rng = np.random.default_rng(1)
    w = {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items() if k.endswith("kernel")}
    m = np_masks(masks.compute_m_by_n_masks(importance.magnitude_scores(w), list(w)))
    for k, mask in m.items():
        assert np.isin(mask, (0, 1)).all()
        assert pruning_utils.is_pruned_m_by_n(tf.constant(w[k] * mask), m_by_n=(2, 4)), k
        if w[k].shape[-2] % 4 == 0:
            assert mask.mean() == 0.5, k
    assert m["subsample_conv1/kernel"].all()  # one input channel: groups of 1 keep it
    # Rank-3 depthwise kernels (DepthwiseConv1D) group along channels as well.
    dw = rng.standard_normal((7, 16, 1)).astype(np.float32)
    mask = masks.compute_m_by_n_masks({"d": np.abs(dw)}, ["d"])["d"].numpy()
    assert (mask.reshape(7, 4, 4).sum(axis=-1) == 2).all()


@pytest.mark.parametrize("shape", [(16, 8), (3, 3, 8, 4), (12, 5)])
def test_m_by_n_matches_tfmot_mask(shape):
    w = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    ours = masks.compute_m_by_n_masks({"k": np.abs(w)}, ["k"])["k"].numpy()
    t = tf.constant(w)
    theirs = pruning_utils.m_by_n_sparsity_mask_prepare(
        pruning_utils.generate_m_by_n_mask(pruning_utils.weights_rearrange(t), (2, 4)), t.shape).numpy()
    assert (ours == theirs).all()


def test_m_by_n_partial_groups():
    w = np.arange(1, 19, dtype=np.float32).reshape(6, 3)  # input groups of 4 and 2
    mask = masks.compute_m_by_n_masks({"k": w}, ["k"])["k"].numpy()
    assert mask[:4].sum(axis=0).tolist() == [2, 2, 2] and mask[4:].all()
    assert mask[2:4].all() and not mask[:2].any()  # the largest two of each group
    mask = masks.compute_m_by_n_masks({"k": w[:5]}, ["k"])["k"].numpy()
    assert mask[4].all()


def test_m_by_n_inside_tf_function():
    w = np.random.default_rng(3).standard_normal((8, 4)).astype(np.float32)
    fn = tf.function(lambda s: masks.compute_m_by_n_masks({"k": s}, ["k"])["k"])
    eager = masks.compute_m_by_n_masks({"k": np.abs(w)}, ["k"])["k"].numpy()
    assert (fn(tf.constant(np.abs(w))).numpy() == eager).all()


@pytest.mark.parametrize("sparsity", [0.0, 0.125, 0.25, 0.5])
def test_m_by_n_follows_the_schedules_sparsity(sparsity):
    # A schedule ramps 2:4 up by pruning more groups: at s only the fraction
    # 2s of groups, the cheapest ones, are 2:4; the rest stay dense.
    w = np.random.default_rng(4).standard_normal((32, 8)).astype(np.float32)
    score = np.abs(w)
    full = masks.compute_m_by_n_masks({"k": score}, ["k"])["k"].numpy()
    fn = tf.function(lambda s, x: masks.compute_m_by_n_masks({"k": x}, ["k"], sparsity=s)["k"])
    mask = fn(tf.constant(sparsity), tf.constant(score)).numpy()
    assert mask.mean() == pytest.approx(1.0 - sparsity)
    groups = mask.T.reshape(8, 8, 4).sum(axis=-1)           # [out, group]
    assert set(np.unique(groups)) <= {2, 4}                   # each group 2:4 or dense
    pruned = groups == 2
    np.testing.assert_array_equal(mask.T.reshape(8, 8, 4)[pruned],
                                  full.T.reshape(8, 8, 4)[pruned])
    # The pruned groups are those that lose the least score.
    cost = (score * (1 - full)).T.reshape(8, 8, 4).sum(axis=-1)
    if 0 < pruned.sum() < pruned.size:
        assert cost[pruned].max() <= cost[~pruned].min()


# ----------------------------------------------------------------------------- blocks vs tfmot


def test_block_mask_matches_tfmot_prune_low_magnitude():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    layer = tfmot.sparsity.keras.prune_low_magnitude(
        tf.keras.layers.Dense(8), block_size=(1, 4),
        pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, frequency=1))
    layer(tf.zeros([1, 8]), training=False)
    layer.layer.kernel.assign(w)
    layer.pruning_step.assign(0)
    layer.pruning_obj.conditional_mask_update()
    theirs = layer.pruning_vars[0][1].numpy()
    s = units.blocks({"d/kernel": (8, 8)}, ["d"], (1, 4))
    ours = masks.compute_masks({"d/kernel": np.abs(w)}, s, 0.5, "uniform")["d/kernel"].numpy()
    assert theirs.mean() == 0.5
    assert (ours == theirs).all()


def test_block_scores_are_tfmot_average_pooling_with_partial_blocks():
    w = np.random.default_rng(5).standard_normal((8, 7)).astype(np.float32)
    pooled = pruning_utils.factorized_pool(tf.constant(np.abs(w)), window_shape=[1, 4], pooling_type="AVG",
                                           strides=[1, 4], padding="SAME").numpy()
    s = units.blocks({"d/kernel": (8, 7)}, ["d"], (1, 4))
    ours = masks.unit_scores({"d/kernel": np.abs(w)}, s).numpy().reshape(8, 2)
    np.testing.assert_allclose(ours, pooled, rtol=1e-6)


# ----------------------------------------------------------------------------- importance


def test_taylor_prunes_a_large_weight_with_zero_gradient():
    w = {"d/kernel": np.array([[10.0, 0.1], [0.2, 0.3]], np.float32)}
    g = {"d/kernel": np.array([[0.0, 1.0], [1.0, 1.0]], np.float32)}
    s = units.unstructured({"d/kernel": (2, 2)}, ["d"])
    by_magnitude = masks.compute_masks(importance.magnitude_scores(w), s, 0.25, "uniform")["d/kernel"].numpy()
    by_taylor = masks.compute_masks(importance.taylor_scores(w, g), s, 0.25, "uniform")["d/kernel"].numpy()
    assert by_magnitude.tolist() == [[1, 0], [1, 1]]
    assert by_taylor.tolist() == [[0, 1], [1, 1]]


def test_taylor_accumulator():
    w = {"a": tf.constant([1.0, -2.0]), "b": tf.constant([3.0])}
    acc = importance.init_taylor_accumulator(w)
    acc = importance.accumulate_taylor(acc, w, {"a": tf.constant([1.0, 1.0]), "b": None})
    acc = importance.accumulate_taylor(acc, w, {"a": tf.constant([-1.0, 0.5]), "b": tf.constant([1.0])})
    assert acc["a"].numpy().tolist() == [2.0, 3.0] and acc["b"].numpy().tolist() == [3.0]
    mean = importance.finalize_taylor(acc, 2)
    assert mean["a"].numpy().tolist() == [1.0, 1.5]
    assert importance.element_scores("taylor", w, mean)["b"].numpy().tolist() == [1.5]
    with pytest.raises(ValueError):
        importance.element_scores("taylor", w)


# ----------------------------------------------------------------------------- apply / stats


def test_apply_masks_and_stats():
    w = {"k": tf.constant([[1.0, 2.0], [3.0, 4.0]]), "b": tf.constant([5.0, 6.0])}
    m = {"k": tf.constant([[1.0, 0.0], [0.0, 0.0]])}
    out = masks.apply_masks(w, m)
    assert out["k"].numpy().tolist() == [[1.0, 0.0], [0.0, 0.0]] and out["b"] is w["b"]
    assert float(stats.sparsity_per_key(out)["k"]) == 0.75
    assert float(stats.sparsity_per_key(m)["k"]) == 0.75
    assert int(stats.count_nonzero_params(out)) == 3
    assert float(stats.overall_sparsity(out, ["k"])) == 0.75
    assert stats.dense_bytes(out) == 24
    assert int(stats.sparse_bytes(out)) == 4 * 3 + 1 + 1  # values + one bitmask byte per tensor
    assert float(stats.overall_sparsity({"x": np.zeros((3, 3), np.float32)})) == 1.0
