"""Tests for tasks.asr.model (tiny Conformer-CTC: shapes, grads, padding, tfmot cloning)."""

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


def test_forward_shape_and_param_count(tiny):
    batch = _batch([61, 45, 33])
    logits = tiny(batch, training=False)
    assert logits.shape == (3, int(model.output_lengths(61)), text.VOCAB_SIZE)
    assert logits.dtype == tf.float32
    assert model.count_parameters(tiny) < 300_000


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
    assert "block0_conv_depthwise" not in model.prunable_layer_names(m, include_depthwise=False)
    assert m.get_layer("block1_mhsa_query").kernel.shape == (CFG.d_model, CFG.d_model)


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
