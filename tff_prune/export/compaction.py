"""Compaction: a structured-pruned Conformer rebuilt physically smaller.

Structured pruning leaves whole units exactly zero. A unit whose removal
cannot change any output is cut out of the kernels, and the model is rebuilt
with `tasks.asr.model.build_conformer_ctc(config, vocab, widths)` (same layer
names, smaller kernels). Removability is decided from the weights themselves,
so any checkpoint works and nothing is removed unless it is provably inert:

* FFN hidden unit ``j``: ``ff_in`` column ``j`` and bias ``j`` zero (swish(0)
  = 0), or ``ff_out`` row ``j`` zero.
* attention q.k dimension ``j``: query column and bias zero, or key column
  and bias zero (``q_j k_j`` is then 0 in every score). Scores keep the
  original ``1/sqrt(d_head)`` scale, so the softmax is unchanged.
* attention value dimension ``j``: value column and bias zero, or output row
  ``j`` zero.
* conv-module channel ``c``: GLU value column ``c`` and its bias zero *and*
  ``pointwise_out`` row ``c`` zero. The channel is then the constant
  ``depthwise bias[c]`` after the depthwise conv; it still enters the
  LayerNorm statistics across channels (so dropping it naively is *not*
  exact), and the compact model keeps those constants in a
  `PartialLayerNormalization`, which makes the removal exact.
* subsampling channels: ``subsample_conv2`` output channel ``c`` (kernel and
  bias zero: relu(0) = 0, or all its ``subsample_dense`` rows zero), and
  ``subsample_conv1`` output channels no ``subsample_conv2`` weight reads.

At least one unit of each kind survives (a zero unit if need be): Keras
layers cannot have width 0, and one inert unit costs nothing in exactness.
Residual-stream columns (``*_out``, ``mhsa_output``, ``subsample_dense``
outputs) are never removed: every module adds into the same ``d_model``
dimensions, so a zero column there still has to exist.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from tasks.asr import model as model_lib


@dataclasses.dataclass(frozen=True)
class CompactionReport:
    """What compaction removed and what it left."""

    dense_params: int
    compact_params: int
    removed: dict[str, int]  # units removed per kind
    widths: model_lib.ModelWidths

    @property
    def param_ratio(self) -> float:
        """compact / dense parameter count."""
        return self.compact_params / self.dense_params


def _zero(a: np.ndarray, axis: int) -> np.ndarray:
    """Per index along ``axis``: is the whole slice exactly zero."""
    other = tuple(i for i in range(a.ndim) if i != axis % a.ndim)
    return np.all(a == 0, axis=other)


def _keep(removable: np.ndarray) -> np.ndarray:
    """Indices to keep (sorted); at least one, the first, if all are removable."""
    keep = np.flatnonzero(~removable)
    return keep if keep.size else np.array([0])


def _plan_subsampling(w: dict, freq: int) -> tuple[dict, tuple[int, int], int]:
    k1, b1 = w["subsample_conv1"]
    k2, b2 = w["subsample_conv2"]
    kd, bd = w["subsample_dense"]
    c2 = k2.shape[-1]
    keep1 = _keep((_zero(k1, -1) & (b1 == 0)) | _zero(k2, 2))
    dense_rows = kd.reshape(freq, c2, -1)
    keep2 = _keep((_zero(k2, -1) & (b2 == 0)) | np.all(dense_rows == 0, axis=(0, 2)))
    new = {
        "subsample_conv1": [k1[..., keep1], b1[keep1]],
        "subsample_conv2": [k2[:, :, keep1, :][..., keep2], b2[keep2]],
        "subsample_dense": [dense_rows[:, keep2, :].reshape(freq * keep2.size, -1), bd],
    }
    removed = (k1.shape[-1] - keep1.size) + (c2 - keep2.size)
    return new, (int(keep1.size), int(keep2.size)), removed


def _plan_ffn(w: dict, prefix: str) -> tuple[dict, int]:
    ki, bi = w[f"{prefix}_in"]
    ko, bo = w[f"{prefix}_out"]
    keep = _keep((_zero(ki, 1) & (bi == 0)) | _zero(ko, 0))
    return {f"{prefix}_in": [ki[:, keep], bi[keep]], f"{prefix}_out": [ko[keep], bo]}, keep


def _plan_attention(w: dict, prefix: str, num_heads: int) -> tuple[dict, tuple, tuple, int, int]:
    (q, bq), (k, bk) = w[f"{prefix}_query"], w[f"{prefix}_key"]
    (v, bv), (o, bo) = w[f"{prefix}_value"], w[f"{prefix}_output"]
    qk_removable = (_zero(q, 1) & (bq == 0)) | (_zero(k, 1) & (bk == 0))
    v_removable = (_zero(v, 1) & (bv == 0)) | _zero(o, 0)
    # At least one dimension in all: one inert q.k dim keeps its head's scores
    # at 0 (uniform attention), exactly what an empty head gives.
    qk_keep, v_keep = _keep(qk_removable), _keep(v_removable)
    dh = q.shape[1] // num_heads
    qk_dims = tuple(int(np.sum(qk_keep // dh == h)) for h in range(num_heads))
    v_dims = tuple(int(np.sum(v_keep // dh == h)) for h in range(num_heads))
    new = {
        f"{prefix}_query": [q[:, qk_keep], bq[qk_keep]],
        f"{prefix}_key": [k[:, qk_keep], bk[qk_keep]],
        f"{prefix}_value": [v[:, v_keep], bv[v_keep]],
        f"{prefix}_output": [o[v_keep], bo],
    }
    return new, qk_dims, v_dims, q.shape[1] - qk_keep.size, v.shape[1] - v_keep.size


def _plan_conv(w: dict, prefix: str) -> tuple[dict, int, int]:
    pin, bin_ = w[f"{prefix}_pointwise_in"]
    dw, dwb = w[f"{prefix}_depthwise"]
    gamma, beta = w[f"{prefix}_depthwise_norm"][:2]
    pout, bout = w[f"{prefix}_pointwise_out"]
    channels = pout.shape[0]
    value_zero = _zero(pin[:, :channels], 1) & (bin_[:channels] == 0)
    removable = value_zero & _zero(pout, 0)
    keep = _keep(removable)
    removed = np.setdiff1d(np.arange(channels), keep)
    cols = np.concatenate([keep, keep + channels])
    new = {
        f"{prefix}_pointwise_in": [pin[:, cols], bin_[cols]],
        f"{prefix}_depthwise": [dw[:, :, keep, :], dwb[keep]],
        f"{prefix}_pointwise_out": [pout[keep], bout],
    }
    norm = [gamma[keep], beta[keep]]
    if removed.size:
        # The removed channels' constant depthwise outputs (see module docstring).
        norm.append(dwb[removed])
    new[f"{prefix}_depthwise_norm"] = norm
    return new, int(keep.size), int(removed.size)


def compact_model(model: tf.keras.Model, config: model_lib.ConformerConfig
                  ) -> tuple[tf.keras.Model, CompactionReport]:
    """Rebuilds ``model`` (a plain, masked Conformer-CTC) without its inert units.

    ``config`` is the ConformerConfig ``model`` was built from. Returns the
    compact model (same inputs, outputs and layer names) and a report. The
    compact model computes the same logits up to float rounding; check it
    with :func:`max_logit_difference`.
    """
    if any(layer.name.startswith("prune_low_magnitude_") for layer in model.layers):
        raise ValueError("compact_model needs a stripped model (tfmot strip_pruning)")
    if any(isinstance(layer, (model_lib.UnevenDotProductAttention,
                              model_lib.PartialLayerNormalization)) for layer in model.layers):
        raise ValueError("the model is already compacted")
    w = {layer.name: layer.get_weights() for layer in model.layers if layer.weights}
    freq = model.get_layer("subsample_conv2").output_shape[2]
    new, sub_widths, sub_removed = _plan_subsampling(w, freq)
    removed = {"subsample_channels": sub_removed, "ffn_units": 0, "qk_dims": 0,
               "value_dims": 0, "conv_channels": 0}
    blocks = []
    for i in range(config.num_blocks):
        ff = {}
        for name in ("ff1", "ff2"):
            weights, keep = _plan_ffn(w, f"block{i}_{name}")
            new.update(weights)
            ff[name] = int(keep.size)
            removed["ffn_units"] += w[f"block{i}_{name}_in"][0].shape[1] - keep.size
        weights, qk_dims, v_dims, qk_removed, v_removed = _plan_attention(
            w, f"block{i}_mhsa", config.num_heads)
        new.update(weights)
        removed["qk_dims"] += qk_removed
        removed["value_dims"] += v_removed
        weights, kept, dropped = _plan_conv(w, f"block{i}_conv")
        new.update(weights)
        removed["conv_channels"] += dropped
        blocks.append(model_lib.BlockWidths(
            ff1_dim=ff["ff1"], ff2_dim=ff["ff2"], qk_dims=qk_dims, v_dims=v_dims,
            conv_channels=kept, conv_removed_channels=dropped))
    widths = model_lib.ModelWidths(subsample_channels=sub_widths, blocks=tuple(blocks))
    vocab_size = model.get_layer("ctc_output").units
    compact = model_lib.build_conformer_ctc(config, vocab_size, widths)
    for layer in compact.layers:
        if layer.weights:
            layer.set_weights(new.get(layer.name, w[layer.name]))
    report = CompactionReport(
        dense_params=model_lib.count_parameters(model),
        compact_params=model_lib.count_parameters(compact),
        removed={k: int(v) for k, v in removed.items()}, widths=widths)
    return compact, report


def max_logit_difference(a: tf.keras.Model, b: tf.keras.Model, features: tf.Tensor,
                         feature_lengths: tf.Tensor) -> float:
    """max |logits_a - logits_b| over the valid output frames of a batch."""
    inputs = {"features": tf.convert_to_tensor(features, tf.float32),
              "feature_lengths": tf.convert_to_tensor(feature_lengths, tf.int32)}
    la, lb = a(inputs, training=False).numpy(), b(inputs, training=False).numpy()
    worst = 0.0
    for i, n in enumerate(model_lib.output_lengths(inputs["feature_lengths"]).numpy()):
        if n:
            worst = max(worst, float(np.max(np.abs(la[i, :n] - lb[i, :n]))))
    return worst


def check_equivalence(a: tf.keras.Model, b: tf.keras.Model, num_mel_bins: int,
                      tolerance: float = 1e-4, seed: int = 0,
                      features: Optional[tf.Tensor] = None,
                      feature_lengths: Optional[tf.Tensor] = None) -> float:
    """Raises unless ``a`` and ``b`` agree within ``tolerance``; returns the max difference.

    Without ``features`` it uses a padded batch of random features (two
    lengths), a cheap guard run on every compacted export.
    """
    if features is None:
        rng = np.random.default_rng(seed)
        features = rng.standard_normal((2, 120, num_mel_bins)).astype(np.float32)
        feature_lengths = np.array([120, 83], np.int32)
        features[1, 83:] = 0.0
    diff = max_logit_difference(a, b, features, feature_lengths)
    if not diff < tolerance:
        raise AssertionError(f"compact model differs from the masked one: max |logit diff| "
                             f"{diff:.3g} >= {tolerance:g}")
    return diff
