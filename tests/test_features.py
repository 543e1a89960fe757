"""Tests for tasks.asr.features (log-mel front end and SpecAugment)."""

import numpy as np
import pytest
import tensorflow as tf

from tasks.asr import features

CFG = features.FeatureConfig()


def _tone(num_samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / CFG.sample_rate
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(num_samples)).astype(np.float32)


@pytest.mark.parametrize("n", [0, 1, 159, 160, 161, 400, 401, 8000, 8001])
def test_num_feature_frames_matches(n):
    feats = features.log_mel_features(tf.constant(_tone(n)), CFG)
    assert feats.shape == (features.num_feature_frames(n, CFG), CFG.num_mel_bins)
    assert feats.dtype == tf.float32


def test_normalized_per_bin():
    feats = features.log_mel_features(tf.constant(_tone(16000)), CFG).numpy()
    assert np.all(np.isfinite(feats))
    np.testing.assert_allclose(feats.mean(axis=0), 0.0, atol=1e-4)
    std = feats.std(axis=0)
    # Bins clipped to a constant by top_db would be 0; a noisy tone has none.
    np.testing.assert_allclose(std, 1.0, atol=1e-3)


def test_silence_is_finite_zero():
    feats = features.log_mel_features(tf.zeros([4000]), CFG).numpy()
    assert np.all(np.isfinite(feats)) and np.all(feats == 0.0)


def test_graph_mode_dataset_map():
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(np.stack([_tone(3200, s) for s in range(2)])))
    aug = features.SpecAugmentConfig()
    ds = ds.map(lambda a: features.spec_augment(features.log_mel_features(a, CFG), aug))
    ds = ds.map(lambda f: (f, features.spec_augment(f, aug, seed=tf.constant([1, 2]))))
    for f, g in ds:
        assert f.shape == (20, CFG.num_mel_bins) and g.shape == f.shape


def test_spec_augment_masks_bands_and_keeps_shape():
    feats = features.log_mel_features(tf.constant(_tone(32000)), CFG)  # 200 frames
    cfg = features.SpecAugmentConfig(num_freq_masks=2, freq_mask_param=15, num_time_masks=2,
                                     time_mask_param=20)
    zero_cols = zero_rows = 0
    for seed in range(10):
        out = features.spec_augment(feats, cfg, seed=seed).numpy()
        assert out.shape == feats.shape and out.dtype == np.float32
        changed = out != feats.numpy()
        assert np.all(out[changed] == 0.0)  # masks fill with 0 (the utterance mean)
        zero_cols += np.all(out == 0.0, axis=0).sum()
        zero_rows += np.all(out == 0.0, axis=1).sum()
        # No band wider than the configured maxima (2 masks may overlap/abut).
        assert np.all(out == 0.0, axis=0).sum() <= 2 * 15
        assert np.all(out == 0.0, axis=1).sum() <= 2 * 20
    assert zero_cols > 0 and zero_rows > 0
    # Unseeded path: tfio's stateful ops, shape preserved.
    assert features.spec_augment(feats, cfg).shape == feats.shape


def test_spec_augment_seeded_is_deterministic_and_short_inputs_ok():
    feats = tf.random.normal([30, CFG.num_mel_bins])
    cfg = features.SpecAugmentConfig()
    a = features.spec_augment(feats, cfg, seed=(3, 4))
    b = features.spec_augment(feats, cfg, seed=(3, 4))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Time masks are capped at 20% of length: 30 frames -> at most 6 per mask.
    assert np.all(a.numpy() == 0.0, axis=1).sum() <= 12
    for t in (0, 1, 2):
        short = tf.random.normal([t, CFG.num_mel_bins])
        assert features.spec_augment(short, cfg).shape == short.shape
        assert features.spec_augment(short, cfg, seed=0).shape == short.shape
