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

Compacted models (``build_conformer_ctc(..., widths=ModelWidths(...))``, made
by ``tasks.asr.compaction`` from a structured-pruned model) have the
same layer names with per-layer widths: per-block FFN sizes, per-head q.k and
value widths (:class:`UnevenDotProductAttention`), fewer conv-module channels
(:class:`PartialLayerNormalization` keeps the removed channels' constant
values in the LayerNorm statistics), fewer subsampling channels, and
residual-stream writers that compute only their unpruned ``d_model``
columns (:class:`ScatterColumns` places them). With
``widths=None`` (the default) the model is exactly the one described above.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np
import tensorflow as tf

from tff_prune.export import compaction as _compaction

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
    def micro(cls, **overrides) -> "ConformerConfig":
        """d32 x 1 block x 2 heads, 16 subsampling channels (~40k parameters):
        the smallest model with every coupled unit kind (process tests)."""
        return cls(**{**dict(d_model=32, num_blocks=1, num_heads=2, subsampling_channels=16), **overrides})

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


@dataclasses.dataclass(frozen=True)
class BlockWidths:
    """Widths of one compacted Conformer block.

    ``qk_dims[h]`` / ``v_dims[h]``: query-key and value width of head ``h``
    (``d_model // num_heads`` each when dense; 0 is allowed).
    ``conv_channels``: conv-module channels kept; ``conv_removed_channels``:
    how many were removed (their constant depthwise outputs still enter the
    depthwise LayerNorm's statistics, see :class:`PartialLayerNormalization`).
    ``*_columns``: the ``d_model`` columns a residual-stream writer
    (``ff1_out``, ``mhsa_output``, ``conv_pointwise_out``, ``ff2_out``)
    computes, in order; the others are exact zeros (:class:`ScatterColumns`).
    ``None``: all of them.
    """

    ff1_dim: int
    ff2_dim: int
    qk_dims: tuple[int, ...]
    v_dims: tuple[int, ...]
    conv_channels: int
    conv_removed_channels: int = 0
    ff1_out_columns: tuple[int, ...] | None = None
    mhsa_output_columns: tuple[int, ...] | None = None
    conv_pointwise_out_columns: tuple[int, ...] | None = None
    ff2_out_columns: tuple[int, ...] | None = None


#: BlockWidths' residual-writer fields: ``{writer layer suffix}_columns``.
WRITER_COLUMN_FIELDS = ("ff1_out_columns", "mhsa_output_columns", "conv_pointwise_out_columns",
                        "ff2_out_columns")


def _tuple_or_none(value):
    return None if value is None else tuple(int(v) for v in value)


@dataclasses.dataclass(frozen=True)
class ModelWidths:
    """Per-layer widths of a compacted Conformer (see :func:`build_conformer_ctc`)."""

    subsample_channels: tuple[int, int]  # subsample_conv1, subsample_conv2 outputs
    blocks: tuple[BlockWidths, ...]
    subsample_dense_columns: tuple[int, ...] | None = None  # as BlockWidths' *_columns

    @classmethod
    def dense(cls, config: "ConformerConfig") -> "ModelWidths":
        """The widths of the uncompacted model built from ``config``."""
        dh = config.d_model // config.num_heads
        block = BlockWidths(
            ff1_dim=config.ff_multiplier * config.d_model,
            ff2_dim=config.ff_multiplier * config.d_model,
            qk_dims=(dh,) * config.num_heads, v_dims=(dh,) * config.num_heads,
            conv_channels=config.d_model)
        return cls(subsample_channels=(config.subsampling_channels,) * 2,
                   blocks=(block,) * config.num_blocks)

    def to_json(self) -> dict:
        """JSON-friendly dict (lists for tuples); inverse of :meth:`from_json`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: dict) -> "ModelWidths":
        """Rebuilds widths written by :meth:`to_json`."""
        blocks = tuple(BlockWidths(**{**b, "qk_dims": tuple(b["qk_dims"]),
                                      "v_dims": tuple(b["v_dims"]),
                                      **{f: _tuple_or_none(b.get(f)) for f in WRITER_COLUMN_FIELDS}})
                       for b in value["blocks"])
        return cls(subsample_channels=tuple(value["subsample_channels"]), blocks=blocks,
                   subsample_dense_columns=_tuple_or_none(value.get("subsample_dense_columns")))


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
class StatelessDropout(tf.keras.layers.Layer):
    """Inverted dropout whose mask is a pure function of the layer and its input.

    Keras' `Dropout` draws from stateful random ops: inside TFF's C++ worker
    their state depends on how many calls ran before and in which order, so
    federated runs (and a run resumed from a checkpoint) would not repeat bit
    for bit. Here the seed is (a hash of the layer name, a fingerprint of the
    input values): a new mask for every batch, step, client and round, and
    the same mask whenever the computation is repeated.
    """

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate = rate
        self._salt = zlib.crc32(self.name.encode("utf-8")) & 0x7FFFFFFF

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        fingerprint = tf.bitcast(tf.reduce_sum(tf.cast(inputs, tf.float32)), tf.int32)
        seed = tf.stack([fingerprint, tf.constant(self._salt, tf.int32)])
        keep = tf.random.stateless_uniform(tf.shape(inputs), seed) >= self.rate
        return tf.where(keep, inputs / (1.0 - self.rate), tf.zeros_like(inputs))

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


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


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class UnevenDotProductAttention(tf.keras.layers.Layer):
    """:class:`DotProductAttention` with per-head widths (compacted models).

    ``[q [B, T, sum(qk_dims)], k (same), v [B, T, sum(v_dims)], mask] ->
    [B, T, sum(v_dims)]``. Head ``h`` uses the ``h``-th slices of q/k (width
    ``qk_dims[h]``) and v (width ``v_dims[h]``). Scores are scaled by
    ``1 / sqrt(scale_dim)``, the *original* head width, so removing q.k
    dimensions that were exactly zero leaves every score unchanged. A head
    with no q.k dimensions attends uniformly to the valid keys (all its scores
    were 0); a head with no value dimensions contributes nothing and is skipped.
    """

    def __init__(self, qk_dims, v_dims, scale_dim: int, **kwargs):
        super().__init__(**kwargs)
        if len(qk_dims) != len(v_dims):
            raise ValueError(f"qk_dims {qk_dims} and v_dims {v_dims} differ in number of heads")
        self.qk_dims = tuple(int(d) for d in qk_dims)
        self.v_dims = tuple(int(d) for d in v_dims)
        self.scale_dim = int(scale_dim)

    @staticmethod
    def _padded_heads(x, dims: tuple[int, ...]):
        """[B, T, sum(dims)] -> [B, H, T, max(dims)]: each head's slice, padded
        with exact zeros to the widest head (a zero dimension adds 0 to every
        score, and a zero value column only fills the padding of the result)."""
        width = max(dims)
        heads = tf.split(x, dims, axis=-1) if len(dims) > 1 else [x]
        return tf.stack([tf.pad(h, [[0, 0], [0, 0], [0, width - d]]) if d < width else h
                         for h, d in zip(heads, dims)], axis=1)

    def call(self, inputs):
        # All heads in one batched pair of matmuls and one softmax, as in the
        # dense layer. Measured 2026-12-06 (`medium`, batch 8, forward and
        # backward of one block's core): 3.1 ms at 50% column sparsity and
        # 2.2 ms at 75%, against 3.0 and 1.9 ms for a per-head loop and 2.6 ms
        # dense; the whole step did not move. Kept for its smaller graph (259
        # ops against 315, 4 heads), which every trace pays for.
        query, key, value, mask = inputs
        batch, length = tf.shape(query)[0], tf.shape(query)[1]
        if not sum(self.v_dims):
            return tf.zeros([batch, length, 0], query.dtype)
        num_heads = len(self.qk_dims)
        if sum(self.qk_dims):
            q = self._padded_heads(query, self.qk_dims)
            k = self._padded_heads(key, self.qk_dims)
            scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(self.scale_dim)
        else:
            scores = tf.zeros([batch, num_heads, length, length], query.dtype)
        key_mask = tf.cast(mask, query.dtype)[:, tf.newaxis, tf.newaxis, :]  # [B, 1, 1, T]
        scores += (1.0 - key_mask) * tf.cast(-1e9, scores.dtype)
        context = tf.matmul(tf.nn.softmax(scores, axis=-1),
                            self._padded_heads(value, self.v_dims))  # [B, H, T, max(v)]
        kept = [context[:, h, :, :d] for h, d in enumerate(self.v_dims) if d]
        return tf.concat(kept, axis=-1) if len(kept) > 1 else kept[0]

    def get_config(self):
        return {**super().get_config(), "qk_dims": list(self.qk_dims),
                "v_dims": list(self.v_dims), "scale_dim": self.scale_dim}


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class ScatterColumns(tf.keras.layers.Layer):
    """``[..., k] -> [..., width]``: input column ``i`` at ``columns[i]``, exact zeros elsewhere.

    A compacted residual-stream writer computes only the ``d_model`` columns
    that are not pruned (zero kernel column and bias: an exact zero output)
    and places them with this one gather; the residual add still sees all
    ``d_model`` columns.
    """

    def __init__(self, columns, width: int, **kwargs):
        super().__init__(**kwargs)
        self.columns = tuple(int(c) for c in columns)
        self.width = int(width)
        if len(set(self.columns)) != len(self.columns) or not all(
                0 <= c < self.width for c in self.columns):
            raise ValueError(f"columns must be distinct and in [0, {self.width})")
        # Where each output column reads from: its input column, or the one
        # appended zero column (index k).
        source = np.full(self.width, len(self.columns), np.int32)
        source[list(self.columns)] = np.arange(len(self.columns), dtype=np.int32)
        self._source = source

    def call(self, x):
        padding = [[0, 0]] * (x.shape.rank - 1) + [[0, 1]]
        return tf.gather(tf.pad(x, padding), self._source, axis=-1)

    def get_config(self):
        return {**super().get_config(), "columns": list(self.columns), "width": self.width}


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class PartialLayerNormalization(tf.keras.layers.Layer):
    """LayerNorm over the kept channels of a layer whose other channels are constants.

    A removed conv-module channel ``c`` (GLU value column and bias zero,
    ``pointwise_out`` row zero) leaves the depthwise conv as the constant
    ``depthwise bias[c]`` on every frame; its normalized value is never used,
    but it still enters the mean and variance of the other channels. This
    layer normalizes ``x [..., C_kept]`` with statistics over ``C_kept +
    num_removed`` channels, the removed ones holding ``removed_values``
    (non-trainable for serving; ``train_removed_values`` makes them
    trainable, as the depthwise biases they stand for are in the uncompacted
    model, so that training the compact model trains what the masked one
    would), so it equals LayerNorm on the full width.
    """

    def __init__(self, num_removed: int, epsilon: float = 1e-5,
                 train_removed_values: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.num_removed = int(num_removed)
        self.epsilon = float(epsilon)
        self.train_removed_values = bool(train_removed_values)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.gamma = self.add_weight("gamma", [channels], initializer="ones")
        self.beta = self.add_weight("beta", [channels], initializer="zeros")
        self.removed_values = self.add_weight(
            "removed_values", [self.num_removed], initializer="zeros",
            trainable=self.train_removed_values)
        super().build(input_shape)

    def call(self, x):
        total = float(x.shape[-1] + self.num_removed)
        removed = tf.cast(self.removed_values, x.dtype)
        mean = (tf.reduce_sum(x, axis=-1, keepdims=True) + tf.reduce_sum(removed)) / total
        squares = (tf.reduce_sum(tf.square(x - mean), axis=-1, keepdims=True)
                   + tf.reduce_sum(tf.square(removed - mean), axis=-1, keepdims=True))
        variance = squares / total
        return (x - mean) * tf.math.rsqrt(variance + self.epsilon) * self.gamma + self.beta

    def get_config(self):
        return {**super().get_config(), "num_removed": self.num_removed, "epsilon": self.epsilon,
                "train_removed_values": self.train_removed_values}


# ----------------------------------------------------------------------------- model


def _residual_writer(y, cfg: ConformerConfig, name: str, columns: tuple[int, ...] | None):
    """Dense(d_model) named ``name``; with ``columns`` only those are computed
    (the rest are exact zeros, see :class:`ScatterColumns`)."""
    if columns is None:
        return tf.keras.layers.Dense(cfg.d_model, name=name)(y)
    y = tf.keras.layers.Dense(len(columns), name=name)(y)
    return ScatterColumns(columns, cfg.d_model, name=f"{name}_scatter")(y)


def _feed_forward(x, cfg: ConformerConfig, prefix: str, ff_dim: int | None = None,
                  out_columns: tuple[int, ...] | None = None):
    """Half-step FFN module: x + 0.5 * FFN(LN(x)); ``ff_dim`` overrides the
    hidden width, ``out_columns`` the output columns computed."""
    L = tf.keras.layers
    hidden = cfg.ff_multiplier * cfg.d_model if ff_dim is None else ff_dim
    y = L.LayerNormalization(epsilon=1e-5, name=f"{prefix}_norm")(x)
    y = L.Dense(hidden, activation="swish", name=f"{prefix}_in")(y)
    y = StatelessDropout(cfg.dropout, name=f"{prefix}_dropout1")(y)
    y = _residual_writer(y, cfg, f"{prefix}_out", out_columns)
    y = StatelessDropout(cfg.dropout, name=f"{prefix}_dropout2")(y)
    y = L.Rescaling(0.5, name=f"{prefix}_half")(y)
    return L.Add(name=f"{prefix}_residual")([x, y])


def _self_attention(x, mask, cfg: ConformerConfig, prefix: str,
                    widths: BlockWidths | None = None):
    """MHSA module: x + Dropout(MHSA(LN(x))) with four plain Dense projections.

    With ``widths`` the projections have the per-head widths it gives.
    """
    L = tf.keras.layers
    qk = cfg.d_model if widths is None else sum(widths.qk_dims)
    vd = cfg.d_model if widths is None else sum(widths.v_dims)
    y = L.LayerNormalization(epsilon=1e-5, name=f"{prefix}_norm")(x)
    q = L.Dense(qk, name=f"{prefix}_query")(y)
    k = L.Dense(qk, name=f"{prefix}_key")(y)
    v = L.Dense(vd, name=f"{prefix}_value")(y)
    if widths is None:
        y = DotProductAttention(cfg.num_heads, name=f"{prefix}_attention")([q, k, v, mask])
    else:
        y = UnevenDotProductAttention(
            widths.qk_dims, widths.v_dims, scale_dim=cfg.d_model // cfg.num_heads,
            name=f"{prefix}_attention")([q, k, v, mask])
    y = _residual_writer(y, cfg, f"{prefix}_output",
                         None if widths is None else widths.mhsa_output_columns)
    y = StatelessDropout(cfg.dropout, name=f"{prefix}_dropout")(y)
    return L.Add(name=f"{prefix}_residual")([x, y])


def _convolution(x, mask, cfg: ConformerConfig, prefix: str, channels: int | None = None,
                 removed_channels: int = 0, train_removed_values: bool = False,
                 out_columns: tuple[int, ...] | None = None):
    """Conv module: x + Dropout(PW(swish(LN(DW(GLU(PW(LN(x))))))))."""
    L = tf.keras.layers
    d = cfg.d_model if channels is None else channels
    y = L.LayerNormalization(epsilon=1e-5, name=f"{prefix}_norm")(x)
    y = L.Dense(2 * d, name=f"{prefix}_pointwise_in")(y)
    y = GLU(name=f"{prefix}_glu")(y)
    # Zero padded frames so the 'same'-padded depthwise conv sees exactly the
    # zeros it would see at the true end of the utterance (padding invariance).
    y = ApplyMask(name=f"{prefix}_mask")([y, mask])
    y = L.Reshape((-1, 1, d), name=f"{prefix}_to_2d")(y)
    y = L.DepthwiseConv2D((cfg.conv_kernel_size, 1), padding="same", name=f"{prefix}_depthwise")(y)
    y = L.Reshape((-1, d), name=f"{prefix}_to_1d")(y)
    if removed_channels:
        y = PartialLayerNormalization(removed_channels, epsilon=1e-5,
                                      train_removed_values=train_removed_values,
                                      name=f"{prefix}_depthwise_norm")(y)
    else:
        y = L.LayerNormalization(epsilon=1e-5, name=f"{prefix}_depthwise_norm")(y)
    y = L.Activation("swish", name=f"{prefix}_swish")(y)
    y = _residual_writer(y, cfg, f"{prefix}_pointwise_out", out_columns)
    y = StatelessDropout(cfg.dropout, name=f"{prefix}_dropout")(y)
    return L.Add(name=f"{prefix}_residual")([x, y])


def build_conformer_ctc(config: ConformerConfig, vocab_size: int,
                        widths: ModelWidths | None = None,
                        train_removed_values: bool = False) -> tf.keras.Model:
    """Build the Conformer-CTC functional model.

    Inputs: ``{"features": float32[B, T, F], "feature_lengths": int32[B]}``.
    Output: logits ``float32[B, T', vocab_size]`` with ``T' = output_lengths(T)``;
    frame ``t < output_lengths(feature_lengths[b])`` of example ``b`` does not
    depend on padding. The padded length ``T`` must be >= 7 (one output
    frame); shorter batches fail in the ``subsample_flatten`` reshape.

    ``widths`` (optional) builds a compacted model with the same layer names
    and per-layer widths (see :class:`ModelWidths`); ``None`` builds the
    dense model ``config`` describes. ``train_removed_values``: a compacted
    model for training (see :class:`PartialLayerNormalization`).
    """
    L = tf.keras.layers
    cfg = config
    if widths is not None and len(widths.blocks) != cfg.num_blocks:
        raise ValueError(f"widths has {len(widths.blocks)} blocks, config {cfg.num_blocks}")
    if widths is not None and any(len(b.qk_dims) != cfg.num_heads or len(b.v_dims) != cfg.num_heads
                                  for b in widths.blocks):
        raise ValueError(f"widths must give {cfg.num_heads} q.k and value widths per block")
    sub1, sub2 = ((cfg.subsampling_channels,) * 2 if widths is None
                  else widths.subsample_channels)
    features = tf.keras.Input(shape=(None, cfg.num_mel_bins), dtype=tf.float32, name="features")
    feature_lengths = tf.keras.Input(shape=(), dtype=tf.int32, name="feature_lengths")

    # Valid (not 'same') padding: 'same' with stride 2 pads differently for odd
    # and even T, which would make outputs depend on how much padding a batch has.
    x = L.Reshape((-1, cfg.num_mel_bins, 1), name="subsample_expand")(features)
    x = L.Conv2D(sub1, 3, strides=2, padding="valid", activation="relu",
                 name="subsample_conv1")(x)
    x = L.Conv2D(sub2, 3, strides=2, padding="valid", activation="relu",
                 name="subsample_conv2")(x)
    freq = _valid_conv_size(_valid_conv_size(cfg.num_mel_bins))
    x = L.Reshape((-1, freq * sub2), name="subsample_flatten")(x)
    x = _residual_writer(x, cfg, "subsample_dense",
                         None if widths is None else widths.subsample_dense_columns)
    x = SinusoidalPositionalEncoding(name="positional_encoding")(x)
    x = StatelessDropout(cfg.dropout, name="subsample_dropout")(x)
    mask = FrameMask(name="frame_mask")([x, feature_lengths])

    for i in range(cfg.num_blocks):
        bw = None if widths is None else widths.blocks[i]
        x = _feed_forward(x, cfg, f"block{i}_ff1", None if bw is None else bw.ff1_dim,
                          None if bw is None else bw.ff1_out_columns)
        x = _self_attention(x, mask, cfg, f"block{i}_mhsa", bw)
        x = _convolution(x, mask, cfg, f"block{i}_conv",
                         None if bw is None else bw.conv_channels,
                         0 if bw is None else bw.conv_removed_channels,
                         train_removed_values,
                         None if bw is None else bw.conv_pointwise_out_columns)
        x = _feed_forward(x, cfg, f"block{i}_ff2", None if bw is None else bw.ff2_dim,
                          None if bw is None else bw.ff2_out_columns)
        x = L.LayerNormalization(epsilon=1e-5, name=f"block{i}_final_norm")(x)

    logits = L.Dense(vocab_size, name="ctc_output")(x)
    return tf.keras.Model(
        inputs={"features": features, "feature_lengths": feature_lengths},
        outputs=logits,
        name="conformer_ctc",
    )


# ----------------------------------------------------------------------------- introspection

# Kept dense by default: the output layer (one column per character).
# subsample_conv1 is pruned: its kernel is tiny, but its output channels are
# subsample_conv2's input channels, and subsample_conv2 does the largest
# share of a client step's time (about half of a `medium` step); kept
# dense, it keeps the pruned model's FLOPs well above its parameters (docs/results.md,
# "Uniform allocation by kind, and a pruned first conv").
EXCLUDED_FROM_PRUNING = r"^ctc_output$"

_PRUNABLE_TYPES = (tf.keras.layers.Dense, tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D)


def prunable_layer_names(model: tf.keras.Model, include_depthwise: bool = True) -> list[str]:
    """Names of the model's Dense and Conv2D layers (and DepthwiseConv2D unless excluded).

    Looks at the layers themselves, so call it on an unwrapped model (or after
    ``strip_pruning``). Order is the model's layer order.
    """
    types = _PRUNABLE_TYPES if include_depthwise else _PRUNABLE_TYPES[:2]
    return [layer.name for layer in model.layers if isinstance(layer, types)]


# One definition for every task; the model's users count with it.
count_parameters = _compaction.count_parameters
