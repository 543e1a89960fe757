"""Tests for tasks.asr.model (tiny Conformer-CTC: shapes, grads, padding, tfmot cloning)."""

import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tasks.asr import ctc, model, text

CFG = model.ConformerConfig.tiny()


@pytest.fixture(scope="module")
def tiny():
    tf.keras.utils.set_random_seed(0)
    return model.build_conformer_ctc(CFG, text.VOCAB_SIZE)


def _batch(lengths, max_len=None, seed=0):
    max_len = max_len or max(lengths)
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((len(lengths), max_len, CFG.num_mel_bins)).astype(np.float32)
    for i, n in enumerate(lengths):
        feats[i, n:] = 0.0
    return {"features": tf.constant(feats), "feature_lengths": tf.constant(lengths, tf.int32)}


def test_output_lengths_arithmetic():
    for n in range(0, 40):
        x = tf.zeros([1, max(n, 7), CFG.num_mel_bins])
        # Conv output size for two valid 3x3 / stride-2 convs, computed by Keras itself.
        conv = tf.keras.layers.Conv2D(1, 3, strides=2)
        expected = conv(conv(tf.reshape(x, [1, -1, CFG.num_mel_bins, 1]))).shape[1] if n >= 7 else 0
        assert model.output_lengths(n) == expected, n
        assert int(model.output_lengths(tf.constant([n]))[0]) == expected
    assert model.output_lengths(tf.constant([301, 300, 7])).dtype == tf.int32


# An uneven config: every width differs, so a layer built from the wrong
# hyper-parameter (or a hard-coded one) changes a shape or the count.
ODD = model.ConformerConfig(num_mel_bins=40, d_model=24, num_blocks=3, num_heads=3,
                            ff_multiplier=2, conv_kernel_size=5, dropout=0.0,
                            subsampling_channels=8)
ODD_VOCAB = 11


def _freq_positions(num_mel_bins):
    """Frequency positions left by two valid 3x3 / stride-2 convs."""
    after_one = (num_mel_bins - 3) // 2 + 1
    return (after_one - 3) // 2 + 1


def _expected_kernel_shapes(cfg, vocab):
    """Kernel shape of every prunable layer, written out from the module docstring."""
    d, ff, k, c = cfg.d_model, cfg.ff_multiplier * cfg.d_model, cfg.conv_kernel_size, \
        cfg.subsampling_channels
    shapes = {"subsample_conv1": (3, 3, 1, c), "subsample_conv2": (3, 3, c, c),
              "subsample_dense": (_freq_positions(cfg.num_mel_bins) * c, d)}
    for i in range(cfg.num_blocks):
        shapes.update({
            f"block{i}_ff1_in": (d, ff), f"block{i}_ff1_out": (ff, d),
            f"block{i}_mhsa_query": (d, d), f"block{i}_mhsa_key": (d, d),
            f"block{i}_mhsa_value": (d, d), f"block{i}_mhsa_output": (d, d),
            f"block{i}_conv_pointwise_in": (d, 2 * d),
            f"block{i}_conv_depthwise": (k, 1, d, 1),
            f"block{i}_conv_pointwise_out": (d, d),
            f"block{i}_ff2_in": (d, ff), f"block{i}_ff2_out": (ff, d)})
    shapes["ctc_output"] = (d, vocab)
    return shapes


def _expected_parameter_count(cfg, vocab):
    """The Conformer-CTC's parameters, layer by layer (LayerNorms: gamma and beta)."""
    d, ff, k, c = cfg.d_model, cfg.ff_multiplier * cfg.d_model, cfg.conv_kernel_size, \
        cfg.subsampling_channels
    front = (9 * 1 * c + c) + (9 * c * c + c) + (_freq_positions(cfg.num_mel_bins) * c * d + d)
    ffn = 2 * d + (d * ff + ff) + (ff * d + d)
    mhsa = 2 * d + 4 * (d * d + d)
    conv = 2 * d + (d * 2 * d + 2 * d) + (k * d + d) + 2 * d + (d * d + d)
    block = ffn + mhsa + conv + ffn + 2 * d
    return front + cfg.num_blocks * block + (d * vocab + vocab)


def _kernel_shape(layer):
    """Shape of a Dense / Conv2D kernel or a DepthwiseConv2D depthwise kernel."""
    if isinstance(layer, tf.keras.layers.DepthwiseConv2D):
        return tuple(layer.depthwise_kernel.shape)
    return tuple(layer.kernel.shape)


def test_forward_shape_and_param_count(tiny):
    batch = _batch([61, 45, 33])
    logits = tiny(batch, training=False)
    assert logits.shape == (3, int(model.output_lengths(61)), text.VOCAB_SIZE)
    assert logits.dtype == tf.float32
    assert np.all(np.isfinite(logits.numpy()))
    assert _expected_parameter_count(CFG, text.VOCAB_SIZE) == 244_605  # the "~245k" of tiny()
    assert model.count_parameters(tiny) == 244_605
    # No non-trainable state (no BatchNorm) in the dense model.
    assert model.count_parameters(tiny, trainable_only=False) == 244_605


def test_param_count_and_shapes_follow_every_config_field():
    tf.keras.utils.set_random_seed(0)
    m = model.build_conformer_ctc(ODD, ODD_VOCAB)
    assert model.count_parameters(m) == _expected_parameter_count(ODD, ODD_VOCAB)
    expected = _expected_kernel_shapes(ODD, ODD_VOCAB)
    got = {name: _kernel_shape(m.get_layer(name)) for name in model.prunable_layer_names(m)}
    assert got == expected
    batch = {"features": tf.random.stateless_normal([2, 29, ODD.num_mel_bins], seed=[3, 4]),
             "feature_lengths": tf.constant([29, 20])}
    assert m(batch, training=False).shape == (2, model.output_lengths(29), ODD_VOCAB)


def test_ctc_output_is_a_linear_readout_of_the_last_block(tiny):
    """Logits are unnormalized scores: the last block's LayerNorm output times
    ``ctc_output``'s kernel plus bias (no softmax, no activation)."""
    batch = _batch([61, 45])
    last = tiny.get_layer(f"block{CFG.num_blocks - 1}_final_norm").output
    hidden = tf.keras.Model(tiny.inputs, last)(batch, training=False).numpy()
    kernel, bias = tiny.get_layer("ctc_output").get_weights()
    logits = tiny(batch, training=False).numpy()
    np.testing.assert_allclose(logits, hidden @ kernel + bias, atol=1e-4)
    # Not already normalized: log-softmax moves them (they are not log-probs).
    log_probs = tf.nn.log_softmax(logits).numpy()
    assert np.max(np.abs(log_probs - logits)) > 1e-2
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, atol=1e-5)


def test_gradients_under_ctc_loss(tiny):
    batch = _batch([64, 51])
    labels = tf.constant([text.encode("hello"), text.encode("hi") + [0, 0, 0]])
    with tf.GradientTape() as tape:
        logits = tiny(batch, training=True)
        loss = tf.reduce_mean(ctc.ctc_loss(labels, tf.constant([5, 2]), logits,
                                           model.output_lengths(batch["feature_lengths"])))
    grads = tape.gradient(loss, tiny.trainable_variables)
    assert np.isfinite(float(loss))
    for var, grad in zip(tiny.trainable_variables, grads):
        assert grad is not None, var.name
        assert np.all(np.isfinite(tf.convert_to_tensor(grad).numpy())), var.name


def test_padding_invariance(tiny):
    lengths = [37, 29]
    short = _batch(lengths, seed=1)
    padded = dict(short)
    # Extra (non-zero) garbage frames must not leak into valid outputs.
    garbage = tf.random.stateless_normal([2, 23, CFG.num_mel_bins], seed=[1, 2])
    padded["features"] = tf.concat([short["features"], garbage], axis=1)
    a = tiny(short, training=False).numpy()
    b = tiny(padded, training=False).numpy()
    for i, n in enumerate(lengths):
        valid = model.output_lengths(n)
        np.testing.assert_allclose(a[i, :valid], b[i, :valid], atol=1e-4)


def test_layer_names_and_prunable():
    m = model.build_conformer_ctc(CFG, text.VOCAB_SIZE)
    names = model.prunable_layer_names(m)
    expected = ["subsample_conv1", "subsample_conv2", "subsample_dense", "ctc_output"]
    for i in range(CFG.num_blocks):
        expected += [f"block{i}_{s}" for s in (
            "ff1_in", "ff1_out", "mhsa_query", "mhsa_key", "mhsa_value", "mhsa_output",
            "conv_pointwise_in", "conv_depthwise", "conv_pointwise_out", "ff2_in", "ff2_out")]
    assert sorted(names) == sorted(expected)
    assert names.index("subsample_conv1") == 0 and names[-1] == "ctc_output"
    assert "block0_conv_depthwise" not in model.prunable_layer_names(m, include_depthwise=False)
    assert m.get_layer("block1_mhsa_query").kernel.shape == (CFG.d_model, CFG.d_model)

    # Each name is the Dense / Conv layer holding the kernel of that shape.
    shapes = _expected_kernel_shapes(CFG, text.VOCAB_SIZE)
    assert shapes["block0_ff1_in"] == (CFG.d_model, CFG.ff_multiplier * CFG.d_model)
    assert shapes["ctc_output"] == (CFG.d_model, text.VOCAB_SIZE)
    L = tf.keras.layers
    for name in names:
        layer = m.get_layer(name)
        assert _kernel_shape(layer) == shapes[name], name
        if name.endswith("_depthwise"):
            assert isinstance(layer, L.DepthwiseConv2D) and layer.padding == "same", name
            assert tuple(layer.bias.shape) == (CFG.d_model,), name
        elif name.startswith("subsample_conv"):
            assert isinstance(layer, L.Conv2D) and not isinstance(layer, L.DepthwiseConv2D)
            assert layer.strides == (2, 2) and layer.padding == "valid", name
            assert layer.activation is tf.keras.activations.relu, name
        else:
            assert type(layer) is L.Dense, name
            assert tuple(layer.bias.shape) == (shapes[name][-1],), name
            swish = name.endswith(("ff1_in", "ff2_in"))
            assert (layer.activation is tf.keras.activations.swish) == swish, name
            if not swish:
                assert layer.activation is tf.keras.activations.linear, name
    depthwise = {n for n in names if n.endswith("_conv_depthwise")}
    assert len(depthwise) == CFG.num_blocks
    assert model.prunable_layer_names(m, include_depthwise=False) == [
        n for n in names if n not in depthwise]
    # Every weight matrix lives in one of them (LayerNorms hold vectors only).
    for layer in m.layers:
        if any(len(w.shape) >= 2 for w in layer.weights):
            assert layer.name in names, layer.name
    # The default exclusion keeps exactly the output layer dense.
    assert [n for n in names if re.search(model.EXCLUDED_FROM_PRUNING, n)] == ["ctc_output"]


def test_front_end_receptive_field(tiny):
    """Subsampled frame ``t`` sees exactly input frames ``4t .. 4t + 6``."""
    front = tf.keras.Model(tiny.inputs, tiny.get_layer("subsample_dense").output)
    length = 41
    batch = _batch([length], seed=3)
    base = front(batch, training=False).numpy()[0]
    assert base.shape[0] == model.output_lengths(length) == 9
    for frame in (0, 3, 6, 13, 22, 36, 40):
        feats = batch["features"].numpy().copy()
        feats[0, frame] += 3.0 * np.random.default_rng(frame).standard_normal(CFG.num_mel_bins)
        out = front({**batch, "features": tf.constant(feats)}, training=False).numpy()[0]
        changed = {t for t in range(base.shape[0]) if np.max(np.abs(out[t] - base[t])) > 1e-6}
        assert changed == {t for t in range(base.shape[0]) if 4 * t <= frame <= 4 * t + 6}, frame


def test_attention_mixes_all_valid_frames(tiny):
    """A change far beyond the conv modules' reach (2 blocks x 7 frames) still
    moves the first output frame: self-attention spans the utterance."""
    length = 161
    batch = _batch([length], seed=4)
    assert model.output_lengths(length) == 39
    feats = batch["features"].numpy().copy()
    feats[0, 150:] += 2.0  # subsampled frames >= 36, more than 14 frames from frame 0
    a = tiny(batch, training=False).numpy()
    b = tiny({**batch, "features": tf.constant(feats)}, training=False).numpy()
    assert np.max(np.abs(a[0, 0] - b[0, 0])) > 1e-4


def test_feature_lengths_mask_nonzero_padding(tiny):
    """Only ``feature_lengths`` says which frames are padding: non-zero frames
    past an example's length do not reach its valid outputs, and shortening
    the length changes them."""
    feats = tf.random.stateless_normal([2, 97, CFG.num_mel_bins], seed=[5, 6])
    both = tiny({"features": feats, "feature_lengths": tf.constant([97, 61])},
                training=False).numpy()
    alone = tiny({"features": feats[1:, :61], "feature_lengths": tf.constant([61])},
                 training=False).numpy()
    valid = model.output_lengths(61)
    np.testing.assert_allclose(both[1, :valid], alone[0], atol=1e-4)
    full = tiny({"features": feats, "feature_lengths": tf.constant([97, 97])},
                training=False).numpy()
    np.testing.assert_allclose(full[0], both[0], atol=1e-5)  # example 0 untouched
    assert np.max(np.abs(full[1, :valid] - both[1, :valid])) > 1e-3
    mask = model.FrameMask()([tf.zeros([3, 10, 4]), tf.constant([7, 20, 12])]).numpy()
    np.testing.assert_array_equal(mask, [[1] + [0] * 9, [1] * 4 + [0] * 6, [1] * 2 + [0] * 8])


def test_weight_free_layers_match_numpy_references():
    """The coupling contract of the pruning code: head ``h`` uses columns
    ``h*dh:(h+1)*dh``; GLU channel ``c`` is ``a[c] * sigmoid(a[c + d])``."""
    rng = np.random.default_rng(7)
    batch, length, heads, dh = 2, 5, 3, 4
    d = heads * dh
    q, k, v = (rng.standard_normal((batch, length, d)).astype(np.float32) for _ in range(3))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.float32)
    got = model.DotProductAttention(heads)([q, k, v, mask]).numpy()
    want = np.zeros_like(got)
    for b in range(batch):
        for h in range(heads):
            cols = slice(h * dh, (h + 1) * dh)
            scores = q[b, :, cols] @ k[b, :, cols].T / np.sqrt(dh)
            scores = np.where(mask[b][None, :] > 0, scores, -np.inf)
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            want[b, :, cols] = weights @ v[b, :, cols]
    np.testing.assert_allclose(got, want, atol=1e-5)

    a = rng.standard_normal((2, 3, 2 * d)).astype(np.float32)
    np.testing.assert_allclose(model.GLU()(a).numpy(),
                               a[..., :d] / (1.0 + np.exp(-a[..., d:])), atol=1e-6)

    x = rng.standard_normal((2, 6, 8)).astype(np.float32)
    frames = np.array([[1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(model.ApplyMask()([x, frames]).numpy(), x * frames[..., None])

    pos = np.arange(6)[:, None]
    inv_freq = np.exp(-np.log(10000.0) * np.arange(0, 8, 2) / 8.0)
    pe = np.stack([np.sin(pos * inv_freq), np.cos(pos * inv_freq)], -1).reshape(6, 8)
    np.testing.assert_allclose(model.SinusoidalPositionalEncoding()(x).numpy(), x + pe,
                               atol=1e-5)


def test_dropout_only_in_training_and_repeatable():
    layer = model.StatelessDropout(0.5, name="drop_test")
    x = tf.random.stateless_normal([4, 50], seed=[8, 9]) + 3.0
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    y = layer(x, training=True).numpy()
    np.testing.assert_array_equal(y, layer(x, training=True).numpy())  # same input, same mask
    kept = y != 0
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(y[kept], 2.0 * x.numpy()[kept], rtol=1e-6)


def test_clone_with_prune_low_magnitude_and_strip(tiny):
    sparsity = tfmot.sparsity.keras

    def wrap(layer):
        if isinstance(layer, (tf.keras.layers.Dense, tf.keras.layers.Conv2D,
                              tf.keras.layers.DepthwiseConv2D)):
            return sparsity.prune_low_magnitude(
                layer, pruning_schedule=sparsity.ConstantSparsity(0.5, begin_step=0, frequency=1))
        return layer.__class__.from_config(layer.get_config())

    pruned = tf.keras.models.clone_model(tiny, clone_function=wrap)
    wrapped = [l for l in pruned.layers if l.name.startswith("prune_low_magnitude_")]
    assert len(wrapped) == len(model.prunable_layer_names(tiny))
    batch = _batch([40, 33])
    # Stand-in for the UpdatePruningStep callback (no optimizer here): a training
    # call increments the step to 1, which must be >= 1, and then updates masks.
    for layer in wrapped:
        layer.pruning_step.assign(0)
    logits = pruned(batch, training=True)
    assert logits.shape == (2, int(model.output_lengths(40)), text.VOCAB_SIZE)
    assert np.all(np.isfinite(pruned(batch, training=False).numpy()))
    stripped = sparsity.strip_pruning(pruned)
    assert [l.name for l in stripped.layers] == [l.name for l in tiny.layers]
    kernel = stripped.get_layer("block0_mhsa_query").kernel.numpy()
    assert 0.45 <= float(np.mean(kernel == 0.0)) <= 0.55


def test_serialization_roundtrip(tiny):
    clone = tf.keras.Model.from_config(tiny.get_config())
    assert [l.name for l in clone.layers] == [l.name for l in tiny.layers]
    assert model.count_parameters(clone) == model.count_parameters(tiny)
    # The clone computes the same function once given the same weights.
    clone.set_weights(tiny.get_weights())
    batch = _batch([45, 33])
    np.testing.assert_allclose(clone(batch, training=False).numpy(),
                               tiny(batch, training=False).numpy(), atol=1e-5)
