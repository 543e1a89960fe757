"""Greedy RNN-T decoding in the graph (usable in federated evaluation and in
a serving signature).

Frame by frame, the joint network scores the current frame against the
prediction network's output for the labels emitted so far; the best symbol
is emitted (and fed back to the prediction network) until it is the blank,
or until `max_symbols_per_frame` labels came out of the frame, and then the
next frame starts. Batched: each example stops at its own length, and the
prediction network advances only for the examples that emitted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

# (previous labels [B] int32, state) -> (prediction output [B, P], new state)
PredictFn = Callable[[tf.Tensor, Any], tuple[tf.Tensor, Any]]
# (encoder frame [B, E], prediction output [B, P]) -> logits [B, V]
JoinFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def greedy_decode(encoder_out: tf.Tensor, encoder_lengths: tf.Tensor, predict: PredictFn,
                  join: JoinFn, initial_state: Any, start_label: int, blank: int,
                  max_symbols_per_frame: int = 3) -> tuple[tf.Tensor, tf.Tensor]:
    """Greedy transducer decoding.

    Args:
      encoder_out: [B, T, E] encoder frames.
      encoder_lengths: [B] frames of each example.
      predict: the prediction network's step (see `PredictFn`).
      join: the joint network (see `JoinFn`).
      initial_state: the prediction network's initial state (a nest of [B, ...]).
      start_label: the label fed to the prediction network before any output
        (by convention the blank).
      blank: the blank's index in the joint's output.
      max_symbols_per_frame: at most this many labels per frame.

    Returns:
      (labels [B, T * max_symbols_per_frame] int32, padded with -1; lengths [B]).
    """
    encoder_out = tf.convert_to_tensor(encoder_out)
    batch = tf.shape(encoder_out)[0]
    frames = tf.shape(encoder_out)[1]
    encoder_lengths = tf.cast(encoder_lengths, tf.int32)
    capacity = frames * max_symbols_per_frame
    pred_out, state = predict(tf.fill([batch], tf.cast(start_label, tf.int32)), initial_state)

    def frame_step(t, pred_out, state, labels, lengths):
        frame = encoder_out[:, t]
        live = t < encoder_lengths

        def symbol_step(n, emitting, pred_out, state, labels, lengths):
            best = tf.argmax(join(frame, pred_out), axis=-1, output_type=tf.int32)
            emits = emitting & (best != blank)
            # Write each emitted label at its example's next position.
            index = tf.stack([tf.range(batch), tf.minimum(lengths, capacity - 1)], axis=1)
            labels = tf.tensor_scatter_nd_update(
                labels, index, tf.where(emits, best, tf.gather_nd(labels, index)))
            lengths = lengths + tf.cast(emits, tf.int32)
            new_out, new_state = predict(best, state)
            pick = lambda new, old: tf.where(  # noqa: E731
                tf.reshape(emits, [-1] + [1] * (len(new.shape) - 1)), new, old)
            pred_out = pick(new_out, pred_out)
            state = tf.nest.map_structure(pick, new_state, state)
            return n + 1, emits, pred_out, state, labels, lengths

        _, _, pred_out, state, labels, lengths = tf.while_loop(
            lambda n, emitting, *_: (n < max_symbols_per_frame) & tf.reduce_any(emitting),
            symbol_step, (tf.constant(0), live, pred_out, state, labels, lengths))
        return t + 1, pred_out, state, labels, lengths

    labels = tf.fill([batch, capacity], tf.constant(-1, tf.int32))
    lengths = tf.zeros([batch], tf.int32)
    _, _, _, labels, lengths = tf.while_loop(
        lambda t, *_: t < frames, frame_step,
        (tf.constant(0), pred_out, state, labels, lengths))
    return labels, lengths
