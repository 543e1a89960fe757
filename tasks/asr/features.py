"""Log-mel front end and SpecAugment, built on tensorflow-io.

Everything here works on a single utterance (no batch axis) so that it can be
used inside ``tf.data.Dataset.map``.

Notes on the installed tensorflow-io 0.35.0 ops (read from its source):
  * ``tfio.audio.spectrogram`` is ``|tf.signal.stft(..., pad_end=True)|`` with a
    Hann window, so an utterance of N samples gives ``ceil(N / frame_step)``
    frames (the last ones zero-padded); see :func:`num_feature_frames`.
  * ``tfio.audio.dbscale`` squares its input (magnitude -> power) and clips at
    ``max - top_db`` over the whole utterance.
  * ``tfio.audio.freq_mask`` / ``time_mask`` draw the mask width uniformly from
    ``[0, param)`` (``param`` itself is never reached) and the start from
    ``[0, size - width)``, fill with 0, and use the *stateful*
    ``tf.random.uniform`` with no seed argument. They need ``1 <= param <= size``.
    We therefore pass ``max_width + 1`` (capped at the axis size). Because our
    features are normalized per utterance, 0 is the utterance mean.
    For reproducible augmentation (e.g. per-client determinism in simulation)
    pass ``seed``: the same masks are then drawn with ``tf.random.stateless_*``
    using identical distributions, since the tfio ops cannot take a seed.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_io as tfio

# Guards the per-bin division for silent / constant inputs (variance is in dB^2,
# so 1e-6 is far below any real signal's spread).
_NORM_EPSILON = 1e-6


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Log-mel front-end parameters."""

    sample_rate: int = 16000
    frame_length_ms: float = 25
    frame_step_ms: float = 10
    nfft: int = 512
    num_mel_bins: int = 80
    fmin: float = 20.0
    fmax: float = 7600.0
    top_db: float = 80.0

    @property
    def frame_length(self) -> int:
        """Window length in samples (400 at 16 kHz / 25 ms)."""
        return int(round(self.sample_rate * self.frame_length_ms / 1000))

    @property
    def frame_step(self) -> int:
        """Hop in samples (160 at 16 kHz / 10 ms)."""
        return int(round(self.sample_rate * self.frame_step_ms / 1000))


def num_feature_frames(num_samples: int, config: FeatureConfig = FeatureConfig()) -> int:
    """Number of frames :func:`log_mel_features` returns for ``num_samples`` samples.

    tfio's spectrogram frames with ``pad_end=True``: ``ceil(N / frame_step)``.
    """
    if num_samples < 0:
        raise ValueError("num_samples must be >= 0")
    return -(-num_samples // config.frame_step)


def log_mel_features(audio: tf.Tensor, config: FeatureConfig = FeatureConfig()) -> tf.Tensor:
    """float32[N] waveform in [-1, 1] -> float32[T, num_mel_bins] normalized log-mel.

    Per-utterance normalization: each mel bin has zero mean and unit variance
    over time; a constant bin (e.g. silence) becomes all zeros instead of NaN.
    """
    audio = tf.convert_to_tensor(audio, tf.float32)

    def compute() -> tf.Tensor:
        spec = tfio.audio.spectrogram(
            audio, nfft=config.nfft, window=config.frame_length, stride=config.frame_step
        )
        mel = tfio.audio.melscale(
            spec,
            rate=config.sample_rate,
            mels=config.num_mel_bins,
            fmin=config.fmin,
            fmax=config.fmax,
        )
        logmel = tfio.audio.dbscale(mel, top_db=config.top_db)
        mean, variance = tf.nn.moments(logmel, axes=[0], keepdims=True)
        return (logmel - mean) * tf.math.rsqrt(variance + _NORM_EPSILON)

    # The RFFT kernel rejects an empty signal; return [0, F] like the formula says.
    feats = tf.cond(
        tf.size(audio) > 0, compute, lambda: tf.zeros([0, config.num_mel_bins], tf.float32)
    )
    # Static mel dim helps Keras / shape inference downstream.
    return tf.ensure_shape(feats, [None, config.num_mel_bins])


@dataclasses.dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment masking (Park et al. 2019), no time warping.

    ``freq_mask_param`` / ``time_mask_param`` are *maximum* widths (inclusive).
    Each time mask is further capped at ``max_time_mask_fraction`` of the
    utterance length (the "p" of the paper's LD policy).
    """

    num_freq_masks: int = 2
    freq_mask_param: int = 15
    num_time_masks: int = 2
    time_mask_param: int = 20
    max_time_mask_fraction: float = 0.2


def _stateless_mask(features: tf.Tensor, param: tf.Tensor, axis: int, seed: tf.Tensor) -> tf.Tensor:
    """Same distribution as tfio.audio.{freq,time}_mask, drawn from a stateless seed."""
    size = tf.shape(features)[axis]
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    width = tf.random.stateless_uniform([], seeds[0], minval=0, maxval=param, dtype=tf.int32)
    start = tf.random.stateless_uniform([], seeds[1], minval=0, maxval=size - width, dtype=tf.int32)
    idx = tf.range(size)
    idx = tf.reshape(idx, [1, -1] if axis == 1 else [-1, 1])
    cond = tf.logical_and(idx >= start, idx < start + width)
    return tf.where(cond, tf.zeros([], features.dtype), features)


def spec_augment(
    features: tf.Tensor,
    config: SpecAugmentConfig = SpecAugmentConfig(),
    seed: int | tuple[int, int] | tf.Tensor | None = None,
) -> tf.Tensor:
    """Apply frequency and time masks to float32[T, F] features (training data only).

    ``seed=None`` uses the (stateful, unseeded) tfio ops; an int or shape-[2]
    seed gives deterministic masks (see module docstring). Shape and dtype are
    preserved; masked cells are set to 0 (the per-utterance mean).
    """
    features = tf.convert_to_tensor(features)
    num_frames = tf.shape(features)[0]
    num_bins = tf.shape(features)[1]
    if seed is not None:
        seed = tf.convert_to_tensor(seed)
        if seed.shape.rank == 0:
            seed = tf.stack([seed, tf.zeros_like(seed)])
        seed = tf.cast(seed, tf.int64)
        seeds = tf.random.experimental.stateless_split(
            seed, num=max(1, config.num_freq_masks + config.num_time_masks)
        )

    # The tfio ops draw width in [0, param): pass max_width + 1, capped at size
    # so that the start range [0, size - width) is never empty.
    freq_param = tf.minimum(config.freq_mask_param + 1, num_bins)
    max_time_width = tf.minimum(
        config.time_mask_param,
        tf.cast(tf.floor(config.max_time_mask_fraction * tf.cast(num_frames, tf.float32)), tf.int32),
    )
    time_param = tf.minimum(max_time_width + 1, num_frames)

    def masked(x: tf.Tensor) -> tf.Tensor:
        for i in range(config.num_freq_masks):
            if seed is None:
                x = tfio.audio.freq_mask(x, param=freq_param)
            else:
                x = _stateless_mask(x, freq_param, axis=1, seed=seeds[i])
        for j in range(config.num_time_masks):
            if seed is None:
                x = tfio.audio.time_mask(x, param=time_param)
            else:
                x = _stateless_mask(x, time_param, axis=0, seed=seeds[config.num_freq_masks + j])
        return x

    # Empty utterances would make the tfio start range empty (an error): skip.
    return tf.cond(
        tf.logical_and(num_frames > 0, num_bins > 0), lambda: masked(features), lambda: features
    )


__all__ = [
    "FeatureConfig",
    "SpecAugmentConfig",
    "log_mel_features",
    "num_feature_frames",
    "spec_augment",
]
