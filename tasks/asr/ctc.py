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


# A finite "log 0": TFLite has no ``IsFinite`` to guard log-sum-exps of
# ``-inf``; sums of a few of these stay far below any real log-probability
# and far above float32's lowest value.
_LOG_ZERO = -1e30


def _log_add3(a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) -> tf.Tensor:
    """log(e^a + e^b + e^c), elementwise."""
    top = tf.maximum(tf.maximum(a, b), c)
    return top + tf.math.log(tf.exp(a - top) + tf.exp(b - top) + tf.exp(c - top))


def _shift_states(x: tf.Tensor, by: int, fill) -> tf.Tensor:
    """x[..., s - by] along the last (state) axis, ``fill`` where s - by is
    outside; ``by`` < 0 shifts the other way."""
    if by > 0:
        return tf.pad(x[:, :-by], [[0, 0], [by, 0]], constant_values=fill)
    return tf.pad(x[:, -by:], [[0, 0], [0, -by]], constant_values=fill)


def _ctc_state_log_probs(log_probs: tf.Tensor, states: tf.Tensor, skips: tf.Tensor,
                         final: tf.Tensor, logit_lengths: tf.Tensor
                         ) -> tuple[tf.Tensor, tf.Tensor]:
    """CTC forward-backward over the extended label sequence.

    ``log_probs`` float32[B, T, V]; ``states`` int32[B, S] the extended
    labels (blank, l1, blank, l2, ..., blank); ``skips`` bool[B, S]: state s
    may be entered from s - 2 (a label unlike the one two states back);
    ``final`` bool[B, S]: the two states a path may end in. Returns
    log P(labels | logits) float32[B] and the log-occupancy
    float32[B, T, S] (log of the summed probability of the paths in state s
    at frame t), ``_LOG_ZERO``-ish at frames beyond ``logit_lengths``.

    Each frame costs O(S): a state is entered from itself, the state before
    and (where ``skips``) the one before that, i.e. three shifted
    log-sum-exps, where TensorFlow's dense-label algorithm multiplies by a
    dense [S, S] transition matrix.
    """
    emitted = tf.transpose(tf.gather(log_probs, states, axis=2, batch_dims=1),
                           [1, 0, 2])  # [T, B, S]: log y_t(state s)
    num_frames = tf.shape(emitted)[0]
    last_frame = tf.cast(logit_lengths, tf.int32) - 1  # [B]
    first_two = tf.range(tf.shape(states)[1]) < 2
    alpha = tf.where(first_two, emitted[0], _LOG_ZERO)  # [B, S]
    alphas = tf.TensorArray(tf.float32, size=num_frames, element_shape=alpha.shape)
    alphas = alphas.write(0, alpha)

    def forward(t, alpha, alphas):
        entered = _log_add3(alpha, _shift_states(alpha, 1, _LOG_ZERO),
                            tf.where(skips, _shift_states(alpha, 2, _LOG_ZERO), _LOG_ZERO))
        # Frozen after an example's last frame: its final alpha is the carry.
        alpha = tf.where((t <= last_frame)[:, None], entered + emitted[t], alpha)
        return t + 1, alpha, alphas.write(t, alpha)

    _, alpha, alphas = tf.while_loop(lambda t, *_: t < num_frames, forward,
                                     (tf.constant(1), alpha, alphas))
    at_end = tf.where(final, alpha, _LOG_ZERO)
    top = tf.reduce_max(at_end, axis=1)
    log_likelihood = top + tf.math.log(tf.reduce_sum(tf.exp(at_end - top[:, None]), axis=1))

    # beta_t(s): the paths' probability after frame t, from state s at t.
    beta_end = tf.where(final, 0.0, _LOG_ZERO)
    # s -> s + 2 allowed (shifted as int32: TFLite slices and pads no bools).
    skips_ahead = _shift_states(tf.cast(skips, tf.int32), -2, 0) > 0
    betas = tf.TensorArray(tf.float32, size=num_frames, element_shape=alpha.shape)
    betas = betas.write(num_frames - 1, beta_end)

    def backward(t, beta, betas):
        ahead = beta + emitted[t + 1]
        stepped = _log_add3(ahead, _shift_states(ahead, -1, _LOG_ZERO),
                            tf.where(skips_ahead, _shift_states(ahead, -2, _LOG_ZERO),
                                     _LOG_ZERO))
        beta = tf.where((t >= last_frame)[:, None], beta_end, stepped)
        return t - 1, beta, betas.write(t, beta)

    _, _, betas = tf.while_loop(lambda t, *_: t >= 0, backward,
                                (num_frames - 2, beta_end, betas))
    occupancy = tf.transpose(alphas.stack() + betas.stack(), [1, 0, 2])  # [B, T, S]
    valid = tf.sequence_mask(logit_lengths, num_frames)[:, :, None]
    occupancy = tf.where(valid, occupancy, _LOG_ZERO)
    return log_likelihood, occupancy


def portable_ctc_loss(
    labels: tf.Tensor, label_lengths: tf.Tensor, logits: tf.Tensor, logit_lengths: tf.Tensor
) -> tf.Tensor:
    """`ctc_loss` from core TensorFlow ops: what the on-device artifact runs.

    TFLite has no ``CTCLoss`` kernel, not even among its select TF ops. This
    is the CTC forward-backward written out in ops TFLite runs (builtins;
    select TF ops for the per-frame ``TensorArray``s): `_ctc_state_log_probs`,
    O(S) per frame for S = 2L + 1 states, with its closed-form gradient
    (``tf.custom_gradient``: d loss / d log y_t(k) = -(occupancy of the
    states labelled k) / P). Same arguments and result as `ctc_loss`, within
    float rounding (tests/test_ctc.py). ``tf.nn.ctc_loss``'s dense-label
    algorithm, which the artifact used before, spends O(S^2) per frame: on
    the `medium` model's 5 s step (S = 121) it took 145 ms of the step, at
    any model width (docs/results.md). Infeasible labels give ``inf`` and no
    gradient, as the kernel's loss does.
    """
    labels = tf.cast(labels, tf.int32)
    present = tf.sequence_mask(label_lengths, tf.shape(labels)[1])
    labels = tf.where(present, labels, BLANK_INDEX)  # padding may hold anything
    batch = tf.shape(labels)[0]
    blanks = tf.fill([batch, 1], BLANK_INDEX)
    states = tf.concat([tf.reshape(tf.stack([tf.broadcast_to(blanks, tf.shape(labels)), labels],
                                            axis=2), [batch, -1]), blanks], axis=1)
    skips = tf.not_equal(states, BLANK_INDEX) & tf.not_equal(
        states, _shift_states(states, 2, BLANK_INDEX))
    num_states = 2 * tf.cast(label_lengths, tf.int32) + 1
    position = tf.range(tf.shape(states)[1])[None, :]
    final = (position == num_states[:, None] - 1) | (position == num_states[:, None] - 2)
    one_hot_states = tf.one_hot(states, tf.shape(logits)[-1], dtype=tf.float32)  # [B, S, V]

    @tf.custom_gradient
    def negative_log_likelihood(log_probs):
        log_likelihood, occupancy = _ctc_state_log_probs(log_probs, states, skips, final,
                                                         logit_lengths)
        feasible = log_likelihood > 0.5 * _LOG_ZERO

        def gradient(upstream):
            normalizer = tf.where(feasible, log_likelihood, 0.0)[:, None, None]
            share = tf.exp(occupancy - normalizer)  # [B, T, S]: paths' share per state
            scale = tf.where(feasible, upstream, 0.0)[:, None, None]
            return -scale * tf.matmul(share, one_hot_states)  # [B, T, V]

        return tf.where(feasible, -log_likelihood, float("inf")), gradient

    return negative_log_likelihood(tf.nn.log_softmax(tf.cast(logits, tf.float32)))


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
