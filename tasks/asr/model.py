"""Conformer-CTC encoder (Gulati et al. 2020) as a flat Keras functional model.

Design constraints (the pruning code relies on them):

* Every weight matrix lives in a **top-level** ``Dense``, ``Conv2D`` or
  ``DepthwiseConv2D`` layer of the functional model, so that
  ``tf.keras.models.clone_model(model, clone_function=...)`` can swap each one
  for ``tfmot.sparsity.keras.prune_low_magnitude(layer)``. tfmot's registry
  does not support ``MultiHeadAttention``, ``EinsumDense`` or
  ``DepthwiseConv1D``; the depthwise conv is therefore a ``DepthwiseConv2D``
  with a ``(kernel, 1)`` kernel over ``[B, T, 1, d]``.
* All custom layers here are weight-free and serializable (``get_config``).
* No BatchNorm (batch statistics are non-trainable state that federated
  averaging mishandles); LayerNorm everywhere instead.

Layer names are an API (``{i}`` = block index from 0):

=================================  ==========================================
``subsample_conv1/2``              Conv2D(C, 3, stride 2, valid) + ReLU
``subsample_dense``                Dense(d) on flattened freq x channels
``block{i}_ff1_in`` / ``_ff1_out``  half-step FFN: Dense(m*d, swish), Dense(d)
``block{i}_mhsa_query/key/value``  Dense(d) each
``block{i}_mhsa_output``           Dense(d)
``block{i}_conv_pointwise_in``     Dense(2d), followed by GLU
``block{i}_conv_depthwise``        DepthwiseConv2D((k, 1)) over d channels
``block{i}_conv_pointwise_out``    Dense(d)
``block{i}_ff2_in`` / ``_ff2_out``  second half-step FFN
``ctc_output``                     Dense(vocab_size)
=================================  ==========================================

Coupling for structured pruning:

* Attention head ``h`` owns columns ``h*dh:(h+1)*dh`` of the query, key and
  value kernels (and biases) and rows ``h*dh:(h+1)*dh`` of the output kernel,
  ``dh = d_model // num_heads`` (contiguous blocks, see :class:`DotProductAttention`).
* GLU output channel ``c`` is ``a[c] * sigmoid(a[c + d])`` where ``a`` is the
  ``conv_pointwise_in`` output: columns ``c`` and ``c + d`` of that kernel,
  channel ``c`` of the depthwise kernel, and row ``c`` of ``conv_pointwise_out``
  belong together.
* FFN hidden unit ``j``: column ``j`` of ``ff*_in``, row ``j`` of ``ff*_out``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

SUBSAMPLING_FACTOR = 4
_PACKAGE = "tff_prune_asr"


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class ConformerConfig:
    """Conformer-CTC hyper-parameters. Defaults are the ``paper()`` preset."""

    num_mel_bins: int = 80
    d_model: int = 144
    num_blocks: int = 16
    num_heads: int = 4
    ff_multiplier: int = 4
    conv_kernel_size: int = 15
    dropout: float = 0.1
    subsampling_channels: int = 144

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} not divisible by num_heads={self.num_heads}")
        if self.num_mel_bins < 7:
            raise ValueError("num_mel_bins must be >= 7 for two valid stride-2 3x3 convs")

    @classmethod
    def tiny(cls, **overrides) -> "ConformerConfig":
        """d64 x 2 blocks x 4 heads, 32 subsampling channels (~245k parameters; tests)."""
        return cls(**{**dict(d_model=64, num_blocks=2, num_heads=4, subsampling_channels=32), **overrides})

    @classmethod
    def small(cls, **overrides) -> "ConformerConfig":
        """d96 x 2 blocks (~0.6M parameters; quick CPU experiments)."""
        return cls(**{**dict(d_model=96, num_blocks=2, num_heads=4, subsampling_channels=64), **overrides})

    @classmethod
    def medium(cls, **overrides) -> "ConformerConfig":
        """d144 x 8 blocks (~4.5M parameters)."""
        return cls(**{**dict(d_model=144, num_blocks=8, num_heads=4, subsampling_channels=144), **overrides})

    @classmethod
    def paper(cls, **overrides) -> "ConformerConfig":
        """Conformer-S-like d144 x 16 blocks x 4 heads (~8.3M parameters).

        Gulati et al. use conv kernel 32 for Conformer-S; we keep 15 (the
        config default) unless overridden.
        """
        return cls(**{**dict(d_model=144, num_blocks=16, num_heads=4, subsampling_channels=144), **overrides})


# ----------------------------------------------------------------------------- lengths


def output_lengths(feature_lengths):
    """Frames after the two valid 3x3 / stride-2 convs: ``((L - 1) // 2 - 1) // 2``, >= 0.

    Accepts a Python int (returns int) or anything tensor-like (returns an
    int32 tensor). Output frame ``t`` sees input frames ``4t .. 4t + 6`` only,
    so these frames are exactly those unaffected by padding.
    """
    if isinstance(feature_lengths, (int, np.integer)):
        return max(((int(feature_lengths) - 1) // 2 - 1) // 2, 0)
    lengths = tf.cast(feature_lengths, tf.int32)
    return tf.maximum(((lengths - 1) // 2 - 1) // 2, 0)


def _valid_conv_size(size: int) -> int:
    return (size - 3) // 2 + 1


# ----------------------------------------------------------------------------- weight-free layers


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class FrameMask(tf.keras.layers.Layer):
    """``[x [B, T', ...], feature_lengths [B]] -> float mask [B, T']`` of valid subsampled frames."""

    def call(self, inputs):
        x, feature_lengths = inputs
        return tf.sequence_mask(
            output_lengths(feature_lengths), maxlen=tf.shape(x)[1], dtype=self.compute_dtype
        )


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class ApplyMask(tf.keras.layers.Layer):
    """``[x [B, T, C], mask [B, T]] -> x * mask``: zeroes padded frames."""

    def call(self, inputs):
        x, mask = inputs
        return x * tf.cast(mask, x.dtype)[:, :, tf.newaxis]


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class SinusoidalPositionalEncoding(tf.keras.layers.Layer):
    """Adds the absolute sinusoidal encoding of Vaswani et al. (computed, no weights)."""

    def call(self, x):
        length, depth = tf.shape(x)[1], x.shape[-1]
        positions = tf.cast(tf.range(length), tf.float32)[:, tf.newaxis]
        inv_freq = tf.exp(
            -math.log(10000.0) * tf.range(0, depth, 2, dtype=tf.float32) / float(depth)
        )
        angles = positions * inv_freq[tf.newaxis, :]
        # Interleave sin/cos so odd depths also work: [T, depth].
        pe = tf.reshape(tf.stack([tf.sin(angles), tf.cos(angles)], axis=-1), [length, -1])[:, :depth]
        return x + tf.cast(pe, x.dtype)[tf.newaxis]


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class GLU(tf.keras.layers.Layer):
    """Gated linear unit over the last axis: ``a[..., :n] * sigmoid(a[..., n:])``."""

    def call(self, x):
        value, gate = tf.split(x, 2, axis=-1)
        return value * tf.sigmoid(gate)


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class DotProductAttention(tf.keras.layers.Layer):
    """Multi-head scaled dot-product attention core, no weights.

    ``[q, k, v [B, T, d], mask [B, T]] -> [B, T, d]``. Head ``h`` uses feature
    columns ``h*dh:(h+1)*dh`` of q/k/v and writes the same columns of the
    result (which the output Dense consumes as its rows ``h*dh:(h+1)*dh``).
    Padded keys (mask 0) get no attention weight.
    """

    def __init__(self, num_heads: int, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads

    def _split(self, x):
        batch, length = tf.shape(x)[0], tf.shape(x)[1]
        head_dim = x.shape[-1] // self.num_heads
        x = tf.reshape(x, [batch, length, self.num_heads, head_dim])
        return tf.transpose(x, [0, 2, 1, 3])  # [B, H, T, dh]

    def call(self, inputs):
        query, key, value, mask = inputs
        depth = query.shape[-1]
        q, k, v = self._split(query), self._split(key), self._split(value)
        scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(depth // self.num_heads)
        key_mask = tf.cast(mask, scores.dtype)[:, tf.newaxis, tf.newaxis, :]  # [B, 1, 1, T]
        # A large finite penalty (not -inf) keeps rows with no valid key NaN-free.
        scores += (1.0 - key_mask) * tf.cast(-1e9, scores.dtype)
        weights = tf.nn.softmax(scores, axis=-1)
        context = tf.transpose(tf.matmul(weights, v), [0, 2, 1, 3])  # [B, T, H, dh]
        return tf.reshape(context, [tf.shape(query)[0], tf.shape(query)[1], depth])

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}


# ----------------------------------------------------------------------------- model


def _feed_forward(x, cfg: ConformerConfig, prefix: str):
    """Half-step FFN module: x + 0.5 * FFN(LN(x))."""
    L = tf.keras.layers
    y = L.LayerNormalization(epsilon=1e-5, name=f"{prefix}_norm")(x)
    y = L.Dense(cfg.ff_multiplier * cfg.d_model, activation="swish", name=f"{prefix}_in")(y)
    y = L.Dropout(cfg.dropout, name=f"{prefix}_dropout1")(y)
    y = L.Dense(cfg.d_model, name=f"{prefix}_out")(y)
    y = L.Dropout(cfg.dropout, name=f"{prefix}_dropout2")(y)
    y = L.Rescaling(0.5, name=f"{prefix}_half")(y)
    return L.Add(name=f"{prefix}_residual")([x, y])


def _self_attention(x, mask, cfg: ConformerConfig, prefix: str):
    """MHSA module: x + Dropout(MHSA(LN(x))) with four plain Dense projections."""
    L = tf.keras.layers
    y = L.LayerNormalization(epsilon=1e-5, name=f"{prefix}_norm")(x)
    q = L.Dense(cfg.d_model, name=f"{prefix}_query")(y)
    k = L.Dense(cfg.d_model, name=f"{prefix}_key")(y)
    v = L.Dense(cfg.d_model, name=f"{prefix}_value")(y)
    y = DotProductAttention(cfg.num_heads, name=f"{prefix}_attention")([q, k, v, mask])
    y = L.Dense(cfg.d_model, name=f"{prefix}_output")(y)
    y = L.Dropout(cfg.dropout, name=f"{prefix}_dropout")(y)
    return L.Add(name=f"{prefix}_residual")([x, y])


def _convolution(x, mask, cfg: ConformerConfig, prefix: str):
    """Conv module: x + Dropout(PW(swish(LN(DW(GLU(PW(LN(x))))))))."""
    L = tf.keras.layers
    d = cfg.d_model
    y = L.LayerNormalization(epsilon=1e-5, name=f"{prefix}_norm")(x)
    y = L.Dense(2 * d, name=f"{prefix}_pointwise_in")(y)
    y = GLU(name=f"{prefix}_glu")(y)
    # Zero padded frames so the 'same'-padded depthwise conv sees exactly the
    # zeros it would see at the true end of the utterance (padding invariance).
    y = ApplyMask(name=f"{prefix}_mask")([y, mask])
    y = L.Reshape((-1, 1, d), name=f"{prefix}_to_2d")(y)
    y = L.DepthwiseConv2D((cfg.conv_kernel_size, 1), padding="same", name=f"{prefix}_depthwise")(y)
    y = L.Reshape((-1, d), name=f"{prefix}_to_1d")(y)
    y = L.LayerNormalization(epsilon=1e-5, name=f"{prefix}_depthwise_norm")(y)
    y = L.Activation("swish", name=f"{prefix}_swish")(y)
    y = L.Dense(d, name=f"{prefix}_pointwise_out")(y)
    y = L.Dropout(cfg.dropout, name=f"{prefix}_dropout")(y)
    return L.Add(name=f"{prefix}_residual")([x, y])


def build_conformer_ctc(config: ConformerConfig, vocab_size: int) -> tf.keras.Model:
    """Build the Conformer-CTC functional model.

    Inputs: ``{"features": float32[B, T, F], "feature_lengths": int32[B]}``.
    Output: logits ``float32[B, T', vocab_size]`` with ``T' = output_lengths(T)``;
    frame ``t < output_lengths(feature_lengths[b])`` of example ``b`` does not
    depend on padding. The padded length ``T`` must be >= 7 (one output
    frame); shorter batches fail in the ``subsample_flatten`` reshape.
    """
    L = tf.keras.layers
    cfg = config
    features = tf.keras.Input(shape=(None, cfg.num_mel_bins), dtype=tf.float32, name="features")
    feature_lengths = tf.keras.Input(shape=(), dtype=tf.int32, name="feature_lengths")

    # Valid (not 'same') padding: 'same' with stride 2 pads differently for odd
    # and even T, which would make outputs depend on how much padding a batch has.
    x = L.Reshape((-1, cfg.num_mel_bins, 1), name="subsample_expand")(features)
    x = L.Conv2D(cfg.subsampling_channels, 3, strides=2, padding="valid", activation="relu",
                 name="subsample_conv1")(x)
    x = L.Conv2D(cfg.subsampling_channels, 3, strides=2, padding="valid", activation="relu",
                 name="subsample_conv2")(x)
    freq = _valid_conv_size(_valid_conv_size(cfg.num_mel_bins))
    x = L.Reshape((-1, freq * cfg.subsampling_channels), name="subsample_flatten")(x)
    x = L.Dense(cfg.d_model, name="subsample_dense")(x)
    x = SinusoidalPositionalEncoding(name="positional_encoding")(x)
    x = L.Dropout(cfg.dropout, name="subsample_dropout")(x)
    mask = FrameMask(name="frame_mask")([x, feature_lengths])

    for i in range(cfg.num_blocks):
        x = _feed_forward(x, cfg, f"block{i}_ff1")
        x = _self_attention(x, mask, cfg, f"block{i}_mhsa")
        x = _convolution(x, mask, cfg, f"block{i}_conv")
        x = _feed_forward(x, cfg, f"block{i}_ff2")
        x = L.LayerNormalization(epsilon=1e-5, name=f"block{i}_final_norm")(x)

    logits = L.Dense(vocab_size, name="ctc_output")(x)
    return tf.keras.Model(
        inputs={"features": features, "feature_lengths": feature_lengths},
        outputs=logits,
        name="conformer_ctc",
    )


# ----------------------------------------------------------------------------- introspection

_PRUNABLE_TYPES = (tf.keras.layers.Dense, tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D)


def prunable_layer_names(model: tf.keras.Model, include_depthwise: bool = True) -> list[str]:
    """Names of the model's Dense and Conv2D layers (and DepthwiseConv2D unless excluded).

    Looks at the layers themselves, so call it on an unwrapped model (or after
    ``strip_pruning``). Order is the model's layer order.
    """
    types = _PRUNABLE_TYPES if include_depthwise else _PRUNABLE_TYPES[:2]
    return [layer.name for layer in model.layers if isinstance(layer, types)]


def count_parameters(model: tf.keras.Model, trainable_only: bool = True) -> int:
    """Number of scalar parameters (trainable ones by default)."""
    weights = model.trainable_weights if trainable_only else model.weights
    return int(sum(np.prod(w.shape) for w in weights))
