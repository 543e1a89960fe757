"""Compaction of structured-pruned Conformers: exact, and physically smaller."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tasks.asr import compaction
from tasks.asr import ctc
from tasks.asr import features as features_lib
from tasks.asr import librispeech
from tasks.asr import model as model_lib
from tasks.asr import text
from tasks.asr import units
from tff_prune.export import masking

CFG = model_lib.ConformerConfig.tiny(dropout=0.0)


@pytest.fixture(scope="module")
def base_weights():
    tf.keras.utils.set_random_seed(0)
    model = model_lib.build_conformer_ctc(CFG, text.VOCAB_SIZE)
    masking.randomize_non_kernel_weights(model, seed=1)
    return model.get_weights()


def _pruned(base_weights, scheme, sparsity, structure="column"):
    model = model_lib.build_conformer_ctc(CFG, text.VOCAB_SIZE)
    model.set_weights(base_weights)
    masking.apply_magnitude_masks(model, scheme, sparsity, structure,
                                  units.ConformerStructure(CFG.num_heads))
    return model


@pytest.fixture(scope="module")
def real_batch(tiny_corpus_dir):
    """Log-mel features of the held-out utterances (training front end), padded."""
    corpus = librispeech.load_librispeech(os.path.join(tiny_corpus_dir, "test"))
    feats = [features_lib.log_mel_features(e["audio"]).numpy()
             for e in corpus.create_tf_dataset_from_all_clients().take(6)]
    lengths = np.array([f.shape[0] for f in feats], np.int32)
    batch = np.zeros([len(feats), lengths.max(), CFG.num_mel_bins], np.float32)
    for i, f in enumerate(feats):
        batch[i, :len(f)] = f
    return batch, lengths


def _transcripts(model, batch):
    feats, lengths = batch
    logits = model({"features": feats, "feature_lengths": lengths}, training=False)
    return ctc.greedy_decode(logits, model_lib.output_lengths(lengths))


def test_dense_widths_rebuild_the_same_model(base_weights):
    dense = model_lib.build_conformer_ctc(CFG, text.VOCAB_SIZE)
    rebuilt = model_lib.build_conformer_ctc(CFG, text.VOCAB_SIZE,
                                            model_lib.ModelWidths.dense(CFG))
    dense.set_weights(base_weights)
    rebuilt.set_weights(base_weights)
    assert [l.name for l in rebuilt.layers] == [l.name for l in dense.layers]
    assert model_lib.count_parameters(rebuilt) == model_lib.count_parameters(dense)
    x = {"features": tf.random.stateless_normal([2, 40, 80], seed=[0, 1]),
         "feature_lengths": tf.constant([40, 29])}
    np.testing.assert_allclose(rebuilt(x).numpy(), dense(x).numpy(), atol=1e-6)
    widths = model_lib.ModelWidths.dense(CFG)
    assert model_lib.ModelWidths.from_json(widths.to_json()) == widths


def test_structured_50_percent_compacts_exactly_on_real_utterances(base_weights, real_batch):
    masked = _pruned(base_weights, "structured", 0.5, "column")
    compact, report = compaction.compact_model(masked, CFG)
    # Physically smaller: strictly fewer parameters, every kind of unit removed.
    assert report.compact_params < report.dense_params
    assert model_lib.count_parameters(compact) == report.compact_params
    assert report.compact_params < 0.7 * report.dense_params
    for kind in ("ffn_units", "qk_dims", "value_dims", "conv_channels", "subsample_channels"):
        assert report.removed[kind] > 0, kind
    block = report.widths.blocks[0]
    assert compact.get_layer("block0_ff1_in").kernel.shape == (CFG.d_model, block.ff1_dim)
    assert compact.get_layer("block0_mhsa_query").kernel.shape == (CFG.d_model, sum(block.qk_dims))
    assert len(set(block.qk_dims)) > 1  # unequal per-head widths are exercised
    assert compact.get_layer("block0_conv_depthwise").depthwise_kernel.shape[2] == block.conv_channels
    # Residual-stream writers compute their unpruned columns only, and the
    # compact model puts them back in their d_model places.
    assert report.removed["residual_columns"] > 0
    for name, columns in (("block0_ff1_out", block.ff1_out_columns),
                          ("block0_mhsa_output", block.mhsa_output_columns),
                          ("subsample_dense", report.widths.subsample_dense_columns)):
        writer = masked.get_layer(name)
        live = np.flatnonzero(np.any(writer.kernel.numpy() != 0, axis=0)
                              | (writer.bias.numpy() != 0))
        assert columns == tuple(live) and live.size < CFG.d_model, name
        assert compact.get_layer(name).kernel.shape[-1] == live.size, name
    assert model_lib.ModelWidths.from_json(
        json.loads(json.dumps(report.widths.to_json()))) == report.widths
    # Same logits (valid frames) and the same transcripts on real speech.
    assert compaction.max_logit_difference(masked, compact, *real_batch) < 1e-4
    assert _transcripts(compact, real_batch) == _transcripts(masked, real_batch)


def test_removing_conv_channels_needs_their_layernorm_statistics(base_weights, real_batch):
    """The caveat: a plain LayerNorm over the kept channels is *not* the masked model."""
    masked = _pruned(base_weights, "structured", 0.5, "channel")
    compact, report = compaction.compact_model(masked, CFG)
    assert report.removed["conv_channels"] > 0
    assert compaction.max_logit_difference(masked, compact, *real_batch) < 1e-4
    naive_widths = dataclasses.replace(
        report.widths, blocks=tuple(dataclasses.replace(b, conv_removed_channels=0)
                                    for b in report.widths.blocks))
    naive = model_lib.build_conformer_ctc(CFG, text.VOCAB_SIZE, naive_widths)
    for layer in naive.layers:
        if layer.weights:  # all but the removed channels' constants
            layer.set_weights(compact.get_layer(layer.name).get_weights()[:len(layer.weights)])
    assert compaction.max_logit_difference(masked, naive, *real_batch) > 1e-3


def test_head_pruning_drops_whole_heads(base_weights, real_batch):
    masked = _pruned(base_weights, "structured", 0.5, "head")
    compact, report = compaction.compact_model(masked, CFG)
    dh = CFG.d_model // CFG.num_heads
    for block in report.widths.blocks:
        assert set(block.qk_dims) <= {0, dh} and 0 in block.qk_dims
        assert block.qk_dims == block.v_dims
    assert report.compact_params < report.dense_params
    assert compaction.max_logit_difference(masked, compact, *real_batch) < 1e-4


def test_a_fully_pruned_module_keeps_one_inert_unit(base_weights, real_batch):
    model = model_lib.build_conformer_ctc(CFG, text.VOCAB_SIZE)
    model.set_weights(base_weights)
    ff_in = model.get_layer("block1_ff2_in")
    ff_in.kernel.assign(tf.zeros_like(ff_in.kernel))
    ff_in.bias.assign(tf.zeros_like(ff_in.bias))
    value = model.get_layer("block0_mhsa_value")
    value.kernel.assign(tf.zeros_like(value.kernel))
    value.bias.assign(tf.zeros_like(value.bias))
    compact, report = compaction.compact_model(model, CFG)
    assert report.widths.blocks[1].ff2_dim == 1
    assert sum(report.widths.blocks[0].v_dims) == 1
    assert compaction.max_logit_difference(model, compact, *real_batch) < 1e-4


def test_unstructured_zeros_are_not_units(base_weights):
    masked = _pruned(base_weights, "unstructured", 0.8)
    compact, report = compaction.compact_model(masked, CFG)
    # Scattered zeros rarely empty a whole unit, and whatever compaction
    # finds inert is exactly inert (checked on the random guard batch).
    assert report.compact_params > 0.9 * report.dense_params
    assert compaction.check_equivalence(masked, compact, CFG.num_mel_bins) < 1e-4
