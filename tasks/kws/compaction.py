"""Compaction of a structured-pruned DS-CNN: the KWS task's `Compactor`.

Channel ``c`` of a stream (`tasks.kws.model.channel_streams`) is provably
inert, and is cut from the producer's columns and bias, the depthwise
channel and the consumer's rows, when either

* the producer's column ``c`` and bias ``c`` are zero: the channel is then
  ReLU(0) = 0, the bias-free depthwise conv keeps it 0 (zero padding), ReLU
  again 0, and average pooling of 0 is 0, so the consumer reads zeros; or
* the consumer's row ``c`` is zero: whatever the channel holds is never read
  (nothing else reads it: no residuals, no normalization across channels).

This is `tff_prune.export.compaction.either_zero` on the task's own couplings
(`tasks.kws.units.DsCnnStructure`); the model is rebuilt narrower with
`tasks.kws.model.build_ds_cnn(config, widths)` (same layer names).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tasks.kws import model as model_lib
from tasks.kws import units as units_lib
from tff_prune.export import compaction as lib


def compact_model(model: tf.keras.Model, config: model_lib.DsCnnConfig
                  ) -> tuple[tf.keras.Model, lib.CompactionReport]:
    """`model` (a stripped, masked DS-CNN of `config`) rebuilt without inert channels."""
    if any(layer.name.startswith("prune_low_magnitude_") for layer in model.layers):
        raise ValueError("compact_model needs a stripped model (tfmot strip_pruning)")
    w = {layer.name: layer.get_weights() for layer in model.layers if layer.weights}
    for i in range(config.num_blocks):
        if len(w[model_lib.depthwise_name(i)]) != 1:
            raise ValueError(f"{model_lib.depthwise_name(i)} has a bias: zero channels "
                             "would not stay zero (not a DS-CNN of tasks.kws.model)")
    couplings = lib.couplings_by_layers(model, units_lib.DsCnnStructure(config.num_blocks))
    streams = model_lib.channel_streams(config.num_blocks)
    new: dict = {}
    kept = []
    for producer, depthwise, consumer in streams:
        stream = lib.coupling(couplings, producer, consumer)
        keep = lib.keep_indices(lib.either_zero(w, stream))
        lib.cut(w, new, stream, keep)
        if depthwise is not None:
            through = lib.coupling(couplings, producer, depthwise)
            new[depthwise] = lib.take(w[depthwise], through.b_side, lib.b_index(through, keep))
        kept.append(int(keep.size))
    widths = model_lib.DsCnnWidths(tuple(kept))
    compact = model_lib.build_ds_cnn(config, widths)
    for layer in compact.layers:
        if layer.weights:
            layer.set_weights(new.get(layer.name, w[layer.name]))
    channels = sum(w[producer][0].shape[-1] for producer, _, _ in streams)
    report = lib.CompactionReport(
        dense_params=lib.count_parameters(model), compact_params=lib.count_parameters(compact),
        removed={"channels": int(channels - sum(kept))}, widths=widths)
    return compact, report


@dataclasses.dataclass(frozen=True)
class DsCnnCompactor:
    """Compaction of one DS-CNN config (compact rounds and the export)."""

    config: model_lib.DsCnnConfig

    def compact(self, model: tf.keras.Model) -> tuple[tf.keras.Model, model_lib.DsCnnWidths]:
        compact, report = compact_model(model, self.config)
        return compact, report.widths

    def build(self, widths: model_lib.DsCnnWidths) -> tf.keras.Model:
        return model_lib.build_ds_cnn(self.config, widths)
