"""The keyword front end: 1-s clips -> log-mel features (the ASR task's, 40 bins).

One function for training (featurized eagerly, once per client) and for the
serving graph, so both see exactly the same features. tensorflow-io's
spectrogram / melscale / dbscale are Python over `tf.signal`: core ops only.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tasks.asr import features as asr_features
from tasks.kws.corpus import CLIP_SAMPLES

FeatureConfig = asr_features.FeatureConfig
DEFAULT_FEATURES = FeatureConfig(num_mel_bins=40)
# Masks sized for 100 frames x 40 bins (the ASR defaults are for 80 bins, seconds).
DEFAULT_SPEC_AUGMENT = asr_features.SpecAugmentConfig(
    num_freq_masks=2, freq_mask_param=5, num_time_masks=2, time_mask_param=10)
_CHUNK = 256  # clips featurized per call (bounds the eager memory peak)


def num_frames(config: FeatureConfig) -> int:
    """Feature frames of one clip (100 at a 10 ms hop)."""
    return asr_features.num_feature_frames(CLIP_SAMPLES, config)


def fix_length(audio: tf.Tensor) -> tf.Tensor:
    """float32 [B, N] -> [B, CLIP_SAMPLES]: the first second, zero-padded at the end
    (what the corpus loader does to a clip)."""
    audio = tf.convert_to_tensor(audio, tf.float32)[:, :CLIP_SAMPLES]
    return tf.pad(audio, [[0, 0], [0, CLIP_SAMPLES - tf.shape(audio)[1]]])


def clip_features(audio: tf.Tensor, config: FeatureConfig) -> tf.Tensor:
    """float32 [B, CLIP_SAMPLES] -> [B, frames, mels]: each clip normalized on its own."""
    frames = num_frames(config)
    feats = tf.map_fn(lambda clip: asr_features.log_mel_features(clip, config), audio,
                      fn_output_signature=tf.TensorSpec([None, config.num_mel_bins], tf.float32))
    return tf.ensure_shape(feats, [None, frames, config.num_mel_bins])


_traced = {}


def featurize(audio: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """numpy float32 [N, CLIP_SAMPLES] -> float32 [N, frames, mels], in chunks."""
    if config not in _traced:  # one trace per config, not one per call
        _traced[config] = tf.function(
            lambda a: clip_features(a, config),
            input_signature=[tf.TensorSpec([None, CLIP_SAMPLES], tf.float32)])
    parts = [_traced[config](audio[i:i + _CHUNK]).numpy()
             for i in range(0, len(audio), _CHUNK)]
    if not parts:
        return np.zeros([0, num_frames(config), config.num_mel_bins], np.float32)
    return np.concatenate(parts)
