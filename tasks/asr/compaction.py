"""Compaction of a structured-pruned Conformer-CTC: the ASR task's `Compactor`.

The model is rebuilt with `tasks.asr.model.build_conformer_ctc(config, vocab,
widths)` (same layer names, smaller kernels) from the generic machinery of
`tff_prune.export.compaction`; which slices form one unit comes from
`tasks.asr.units.ConformerStructure`, the couplings pruning uses too. Only the
inertness rules below are the Conformer's own:

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

* residual-stream column ``j`` of a writer (``*_out``, ``mhsa_output``,
  ``subsample_dense``): kernel column ``j`` and bias ``j`` zero. Every module
  adds into the same ``d_model`` dimensions, so the column still exists in
  the residual stream: the compact writer computes its other columns only
  and `tasks.asr.model.ScatterColumns` puts them in place, with exact zeros
  in between.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from tasks.asr import model as model_lib
from tasks.asr import units as units_lib
from tff_prune.export import compaction as lib
from tff_prune.export.compaction import CompactionReport

__all__ = ["CompactionReport", "ConformerCompactor", "check_equivalence", "compact_model",
           "max_logit_difference"]


def _plan_subsampling(w: dict, couplings: dict) -> tuple[dict, tuple[int, int], int]:
    c1, c2, dense = "subsample_conv1", "subsample_conv2", "subsample_dense"
    first, flatten = lib.coupling(couplings, c1, c2), lib.coupling(couplings, c2, dense)
    keep1 = lib.keep_indices(lib.either_zero(w, first))
    keep2 = lib.keep_indices(lib.either_zero(w, flatten))
    new: dict = {}
    lib.cut(w, new, first, keep1)
    lib.cut(w, new, flatten, keep2)
    removed = (w[c1][0].shape[-1] - keep1.size) + (w[c2][0].shape[-1] - keep2.size)
    return new, (int(keep1.size), int(keep2.size)), removed


def _plan_ffn(w: dict, couplings: dict, prefix: str) -> tuple[dict, np.ndarray]:
    c = lib.coupling(couplings, f"{prefix}_in", f"{prefix}_out")
    keep = lib.keep_indices(lib.either_zero(w, c))
    new: dict = {}
    lib.cut(w, new, c, keep)
    return new, keep


def _plan_attention(w: dict, couplings: dict, prefix: str, num_heads: int
                    ) -> tuple[dict, tuple, tuple, int, int]:
    qk = lib.coupling(couplings, f"{prefix}_query", f"{prefix}_key")
    vo = lib.coupling(couplings, f"{prefix}_value", f"{prefix}_output")
    # At least one dimension in all: one inert q.k dim keeps its head's scores
    # at 0 (uniform attention), exactly what an empty head gives.
    qk_keep = lib.keep_indices(lib.either_zero(w, qk))
    v_keep = lib.keep_indices(lib.either_zero(w, vo))
    new: dict = {}
    lib.cut(w, new, qk, qk_keep)
    lib.cut(w, new, vo, v_keep)
    width = w[qk.a][0].shape[-1]
    dh = width // num_heads
    qk_dims = tuple(int(np.sum(qk_keep // dh == h)) for h in range(num_heads))
    v_dims = tuple(int(np.sum(v_keep // dh == h)) for h in range(num_heads))
    return (new, qk_dims, v_dims, width - qk_keep.size,
            w[vo.a][0].shape[-1] - v_keep.size)


def _plan_conv(w: dict, couplings: dict, prefix: str) -> tuple[dict, int, int]:
    pw_in, dw, pw_out = (f"{prefix}_pointwise_in", f"{prefix}_depthwise",
                         f"{prefix}_pointwise_out")
    glu = lib.coupling(couplings, pw_in, pw_in)      # value column c <-> gate column
    to_dw, to_out = lib.coupling(couplings, pw_in, dw), lib.coupling(couplings, dw, pw_out)
    channels = np.asarray(glu.a_index)
    # Both must hold (see module docstring): no value in, nothing out.
    removable = (lib.side_zero(w[pw_in], "col", channels)
                 & lib.side_zero(w[pw_out], to_out.b_side, lib.b_index(to_out, channels)))
    keep = lib.keep_indices(removable)
    removed = np.setdiff1d(channels, keep)
    dw_keep = np.unique(lib.b_index(to_dw, keep))
    new = {pw_in: lib.take(w[pw_in], "col", np.concatenate([keep, lib.b_index(glu, keep)])),
           # A depthwise channel is its own input and output: its bias goes too.
           dw: [*lib.take(w[dw][:1], to_dw.b_side, dw_keep), w[dw][1][dw_keep]],
           pw_out: lib.take(w[pw_out], to_out.b_side, lib.b_index(to_out, keep))}
    gamma, beta = w[f"{prefix}_depthwise_norm"][:2]
    norm = [gamma[keep], beta[keep]]
    if removed.size:
        # The removed channels' constant depthwise outputs (see module docstring).
        norm.append(w[dw][1][removed])
    new[f"{prefix}_depthwise_norm"] = norm
    return new, int(keep.size), int(removed.size)


def _plan_residual_columns(w: dict, new: dict, name: str) -> tuple[Optional[tuple[int, ...]], int]:
    """Cuts the zero output columns (with their biases) of residual writer
    ``name``, after any row cuts already in ``new``. Returns the kept
    ``d_model`` columns (``None``: all) and how many were cut."""
    weights = new.get(name, w[name])
    width = weights[0].shape[-1]
    keep = lib.keep_indices(lib.side_zero(weights, "col", np.arange(width)))
    if keep.size == width:
        return None, 0
    new[name] = lib.take(weights, "col", keep)
    return tuple(int(j) for j in keep), int(width - keep.size)


def compact_model(model: tf.keras.Model, config: model_lib.ConformerConfig
                  ) -> tuple[tf.keras.Model, CompactionReport]:
    """Rebuilds ``model`` (a plain, masked Conformer-CTC) without its inert units.

    ``config`` is the ConformerConfig ``model`` was built from. Returns the
    compact model (same inputs, outputs and layer names) and a report (its
    ``widths`` a `model_lib.ModelWidths`). The compact model computes the same
    logits up to float rounding; check it with :func:`max_logit_difference`.
    """
    if any(layer.name.startswith("prune_low_magnitude_") for layer in model.layers):
        raise ValueError("compact_model needs a stripped model (tfmot strip_pruning)")
    if any(isinstance(layer, (model_lib.UnevenDotProductAttention,
                              model_lib.PartialLayerNormalization)) for layer in model.layers):
        raise ValueError("the model is already compacted")
    w = {layer.name: layer.get_weights() for layer in model.layers if layer.weights}
    couplings = lib.couplings_by_layers(model, units_lib.ConformerStructure(config.num_heads))
    new, sub_widths, sub_removed = _plan_subsampling(w, couplings)
    sub_columns, sub_cut = _plan_residual_columns(w, new, "subsample_dense")
    removed = {"subsample_channels": sub_removed, "ffn_units": 0, "qk_dims": 0,
               "value_dims": 0, "conv_channels": 0, "residual_columns": sub_cut}
    blocks = []
    for i in range(config.num_blocks):
        ff = {}
        for name in ("ff1", "ff2"):
            weights, keep = _plan_ffn(w, couplings, f"block{i}_{name}")
            new.update(weights)
            ff[name] = int(keep.size)
            removed["ffn_units"] += w[f"block{i}_{name}_in"][0].shape[1] - keep.size
        weights, qk_dims, v_dims, qk_removed, v_removed = _plan_attention(
            w, couplings, f"block{i}_mhsa", config.num_heads)
        new.update(weights)
        removed["qk_dims"] += qk_removed
        removed["value_dims"] += v_removed
        weights, kept, dropped = _plan_conv(w, couplings, f"block{i}_conv")
        new.update(weights)
        removed["conv_channels"] += dropped
        columns = {}
        for field in model_lib.WRITER_COLUMN_FIELDS:
            writer = f"block{i}_{field.removesuffix('_columns')}"
            columns[field], cut_columns = _plan_residual_columns(w, new, writer)
            removed["residual_columns"] += cut_columns
        blocks.append(model_lib.BlockWidths(
            ff1_dim=ff["ff1"], ff2_dim=ff["ff2"], qk_dims=qk_dims, v_dims=v_dims,
            conv_channels=kept, conv_removed_channels=dropped, **columns))
    widths = model_lib.ModelWidths(subsample_channels=sub_widths, blocks=tuple(blocks),
                                   subsample_dense_columns=sub_columns)
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


@dataclasses.dataclass(frozen=True)
class ConformerCompactor:
    """Compaction of one Conformer config, for compact-model training rounds.

    `compact(model)` rebuilds a stripped model without its inert units (as
    :func:`compact_model`) and returns it with its widths
    (`compact_with_report`: with the whole report); `build(widths)`
    builds a fresh model of those widths to train (removed conv channels'
    constants trainable, as their depthwise biases are in the full model).
    """

    config: model_lib.ConformerConfig
    vocab_size: int

    def compact(self, model: tf.keras.Model) -> tuple[tf.keras.Model, model_lib.ModelWidths]:
        compact, report = compact_model(model, self.config)
        return compact, report.widths

    def compact_with_report(self, model: tf.keras.Model
                            ) -> tuple[tf.keras.Model, CompactionReport]:
        """`compact`, with the units removed per kind (for the export's metadata)."""
        return compact_model(model, self.config)

    def build(self, widths: model_lib.ModelWidths) -> tf.keras.Model:
        return model_lib.build_conformer_ctc(self.config, self.vocab_size, widths,
                                             train_removed_values=True)


def max_logit_difference(a: tf.keras.Model, b: tf.keras.Model, features: tf.Tensor,
                         feature_lengths: tf.Tensor) -> float:
    """max |logits_a - logits_b| over the valid output frames of a batch."""
    inputs = {"features": tf.convert_to_tensor(features, tf.float32),
              "feature_lengths": tf.convert_to_tensor(feature_lengths, tf.int32)}
    return lib.max_output_difference(
        a, b, inputs, model_lib.output_lengths(inputs["feature_lengths"]).numpy())


def random_features(num_mel_bins: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A padded batch of random features (two lengths): the equivalence probe."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((2, 120, num_mel_bins)).astype(np.float32)
    feature_lengths = np.array([120, 83], np.int32)
    features[1, 83:] = 0.0
    return features, feature_lengths


def check_equivalence(a: tf.keras.Model, b: tf.keras.Model, num_mel_bins: int,
                      tolerance: float = 1e-4, seed: int = 0,
                      features: Optional[tf.Tensor] = None,
                      feature_lengths: Optional[tf.Tensor] = None) -> float:
    """Raises unless ``a`` and ``b`` agree within ``tolerance``; returns the max difference.

    Without ``features`` it uses a padded batch of random features (two
    lengths), a cheap guard run on every compacted export.
    """
    if features is None:
        features, feature_lengths = random_features(num_mel_bins, seed)
    return lib.check_equivalence(max_logit_difference(a, b, features, feature_lengths),
                                 tolerance)
