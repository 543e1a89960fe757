"""Word / character error rates: jiwer for host-side reporting, a Keras metric in-graph.

Both are corpus-level (total edits / total reference tokens), and the TF
metric tokenizes like jiwer's defaults so the two agree:
  * words: whitespace-separated tokens (jiwer: collapse spaces, strip, split);
  * chars: the stripped string's characters, spaces included (jiwer's CER
    default strips but does *not* collapse inner runs of spaces).
"""

from __future__ import annotations

from typing import Sequence

import jiwer
import tensorflow as tf


def _check(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no references given")
    if any(not r.strip() for r in references):
        raise ValueError("references must be non-empty")


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER via jiwer; empty hypotheses count as deletions."""
    _check(references, hypotheses)
    return float(jiwer.wer(list(references), list(hypotheses)))


def char_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus CER via jiwer (spaces count as characters)."""
    _check(references, hypotheses)
    return float(jiwer.cer(list(references), list(hypotheses)))


def _tokens(strings: tf.Tensor, unit: str) -> tf.RaggedTensor:
    """tf.string[B] -> ragged [B, None] tokens, tokenized like jiwer's defaults."""
    if unit == "word":
        return tf.strings.split(strings)  # splits on whitespace runs, drops empties
    return tf.strings.unicode_split(tf.strings.strip(strings), "UTF-8")


def edit_distance_counts(ref_strings: tf.Tensor, hyp_strings: tf.Tensor,
                         unit: str = "word") -> tuple[tf.Tensor, tf.Tensor]:
    """(total edit distance, total reference length) as float64, in graph.

    Sums, not ratios, so that they add up exactly across batches and clients.
    """
    ref_strings = tf.reshape(tf.convert_to_tensor(ref_strings, tf.string), [-1])
    hyp_strings = tf.reshape(tf.convert_to_tensor(hyp_strings, tf.string), [-1])
    refs, hyps = _tokens(ref_strings, unit), _tokens(hyp_strings, unit)
    # Both sparse tensors have B rows (ragged -> sparse keeps nrows), and an
    # empty row is an empty sequence, so empty hypotheses count as deletions.
    distances = tf.edit_distance(hyps.to_sparse(), refs.to_sparse(), normalize=False)
    return (tf.reduce_sum(tf.cast(distances, tf.float64)),
            tf.cast(tf.reduce_sum(refs.row_lengths()), tf.float64))


@tf.keras.utils.register_keras_serializable(package="tff_prune_asr")
class EditDistanceMetric(tf.keras.metrics.Metric):
    """Streaming corpus WER/CER: sum of edit distances / sum of reference lengths.

    Keeps the two sums as separate float64 variables (no per-batch ratios), so
    summing the variables across clients and then calling ``result()`` gives
    the exact corpus-level rate (what federated evaluation needs). float64
    keeps integer counts exact up to 2**53.
    """

    def __init__(self, name: str = "wer", unit: str = "word", **kwargs):
        super().__init__(name=name, **kwargs)
        if unit not in ("word", "char"):
            raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
        self.unit = unit
        self.total_errors = self.add_weight("total_errors", shape=(), dtype=tf.float64, initializer="zeros")
        self.total_reference = self.add_weight(
            "total_reference", shape=(), dtype=tf.float64, initializer="zeros"
        )

    def update_state(self, ref_strings: tf.Tensor, hyp_strings: tf.Tensor, sample_weight=None):
        """Accumulate for tf.string[B] references and hypotheses (sample_weight unsupported)."""
        if sample_weight is not None:
            raise ValueError("EditDistanceMetric does not support sample_weight")
        errors, reference = edit_distance_counts(ref_strings, hyp_strings, self.unit)
        self.total_errors.assign_add(errors)
        self.total_reference.assign_add(reference)

    def result(self) -> tf.Tensor:
        return tf.cast(self.total_errors / tf.maximum(self.total_reference, 1.0), tf.float32)

    def reset_state(self) -> None:
        self.total_errors.assign(0.0)
        self.total_reference.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "unit": self.unit}
