"""CTC loss and decoding with the blank at index 0 (see ``text.py``).

TF's ``ctc_greedy_decoder`` / ``ctc_beam_search_decoder`` hard-code the blank
as the *last* class. Greedy decoding is therefore done here directly
(argmax -> collapse repeats -> drop blank 0), and beam search rolls the class
axis so that our blank 0 becomes TF's last class, then shifts ids back.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from . import text

BLANK_INDEX = text.BLANK_ID


def ctc_loss(
    labels: tf.Tensor, label_lengths: tf.Tensor, logits: tf.Tensor, logit_lengths: tf.Tensor
) -> tf.Tensor:
    """Per-example CTC negative log-likelihood, float32[B].

    ``labels`` int32[B, L] padded with 0 (the blank; padding beyond
    ``label_lengths`` is ignored), ``logits`` float[B, T', V] batch-major.
    Infeasible examples (see :func:`feasible_ctc_alignment`) do *not* give
    ``inf``: TF's dense implementation floors log(0) at log(1e-307), so they
    get a large finite loss (~707 + ...). Filter them out before training.
    """
    return tf.nn.ctc_loss(
        labels=tf.cast(labels, tf.int32),
        logits=tf.cast(logits, tf.float32),
        label_length=tf.cast(label_lengths, tf.int32),
        logit_length=tf.cast(logit_lengths, tf.int32),
        logits_time_major=False,
        blank_index=BLANK_INDEX,
    )


def feasible_ctc_alignment(label_ids: Sequence[int], num_output_frames: int) -> bool:
    """Whether a CTC path exists: frames >= len(labels) + #adjacent repeats.

    Each adjacent repeat (e.g. the ``ll`` in "hello") needs a blank between
    the two labels, so "hello" needs 5 + 1 = 6 frames.
    """
    label_ids = list(label_ids)
    repeats = sum(1 for a, b in zip(label_ids, label_ids[1:]) if a == b)
    return num_output_frames >= len(label_ids) + repeats


def greedy_decode_ids(logits: tf.Tensor, logit_lengths: tf.Tensor) -> tf.RaggedTensor:
    """Best-path decoding in TF: int32 ragged [B, None] label ids (blank 0 removed)."""
    best = tf.argmax(logits, axis=-1, output_type=tf.int32)  # [B, T]
    valid = tf.sequence_mask(logit_lengths, maxlen=tf.shape(best)[1])
    # Keep a frame if it differs from the previous frame (first frame always
    # differs from the -1 sentinel) and is not blank.
    previous = tf.pad(best[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
    keep = valid & tf.not_equal(best, previous) & tf.not_equal(best, BLANK_INDEX)
    return tf.ragged.boolean_mask(best, keep)


def greedy_decode_tf(logits: tf.Tensor, logit_lengths: tf.Tensor) -> tf.Tensor:
    """Graph-friendly greedy decoding to tf.string[B] (e.g. for in-graph WER)."""
    return text.decode_tf(greedy_decode_ids(logits, logit_lengths))


def greedy_decode(logits: tf.Tensor, logit_lengths: tf.Tensor) -> list[str]:
    """Greedy (best-path) CTC decoding of float[B, T', V] logits to strings."""
    return [s.decode("utf-8") for s in greedy_decode_tf(logits, logit_lengths).numpy()]


def beam_search_decode(
    logits: tf.Tensor, logit_lengths: tf.Tensor, beam_width: int = 8
) -> list[str]:
    """CTC prefix beam search (no language model) to the best string per example."""
    # Roll classes left by one: our blank 0 -> V-1 (TF's blank), label c -> c-1.
    rolled = tf.roll(tf.cast(logits, tf.float32), shift=-1, axis=-1)
    decoded, _ = tf.nn.ctc_beam_search_decoder(
        tf.transpose(rolled, [1, 0, 2]),  # time-major
        sequence_length=tf.cast(logit_lengths, tf.int32),
        beam_width=beam_width,
        top_paths=1,
    )
    best = decoded[0]
    batch = tf.shape(logits, out_type=tf.int64)[0]
    # Sparse indices are [batch, position]; rebuild per-example id lists.
    ids = tf.RaggedTensor.from_value_rowids(
        best.values + 1, best.indices[:, 0], nrows=batch
    )
    return [s.decode("utf-8") for s in text.decode_tf(ids).numpy()]
