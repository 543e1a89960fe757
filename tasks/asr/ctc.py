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

    ``labels`` int32[B, L] padded (padding beyond ``label_lengths`` is
    ignored, whatever it holds), ``logits`` float[B, T', V] batch-major with
    the blank at index 0.

    TensorFlow's native ``CTCLoss`` kernel: one op that computes the loss and
    its gradient together. ``tf.nn.ctc_loss`` with dense labels builds a
    ``scan`` of log-sum-exps instead (~430 graph ops against ~30): on a
    `medium` client step (batch 8, 5 s) it took 11% of the step, 20x the
    native kernel's time, for the same loss within float rounding
    (tests/test_ctc.py compares both). The kernel's blank is the last class:
    classes are rolled by one (blank 0 -> V-1, label c -> c-1).

    Infeasible examples (see :func:`feasible_ctc_alignment`): a loss of
    ``inf`` when the labels fit the frames only without the blanks between
    repeats, an error when there are more labels than frames. The task keeps
    only feasible utterances (``tasks.asr.task.ctc_feasible``).
    """
    labels = tf.cast(labels, tf.int32)
    present = tf.sequence_mask(label_lengths, tf.shape(labels)[1])
    positions = tf.where(present)
    sparse = tf.SparseTensor(positions, tf.gather_nd(labels, positions) - 1,
                             tf.shape(labels, out_type=tf.int64))
    time_major = tf.transpose(tf.roll(tf.cast(logits, tf.float32), shift=-1, axis=-1),
                              [1, 0, 2])
    return tf.compat.v1.nn.ctc_loss(sparse, time_major, tf.cast(logit_lengths, tf.int32),
                                    time_major=True)


def portable_ctc_loss(
    labels: tf.Tensor, label_lengths: tf.Tensor, logits: tf.Tensor, logit_lengths: tf.Tensor
) -> tf.Tensor:
    """`ctc_loss` from core TensorFlow ops only: what TFLite can run.

    TFLite has no ``CTCLoss`` kernel, not even among its select TF ops, so
    the on-device training artifact computes the loss with
    ``tf.nn.ctc_loss``'s dense-label algorithm (a scan of log-sum-exps and
    its gradient, blank 0). Same arguments and result as `ctc_loss`, within
    float rounding (tests/test_ctc.py); slower, which is why training in TF
    uses the kernel.
    """
    labels = tf.cast(labels, tf.int32)
    # The dense algorithm reads the padding: make it blanks.
    labels = tf.where(tf.sequence_mask(label_lengths, tf.shape(labels)[1]), labels, BLANK_INDEX)
    return tf.nn.ctc_loss(labels, tf.cast(logits, tf.float32), label_lengths,
                          tf.cast(logit_lengths, tf.int32), logits_time_major=False,
                          blank_index=BLANK_INDEX)


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
