"""The RNN-T loss (Graves 2012, "Sequence Transduction with Recurrent Neural
Networks", arXiv 1211.3711) in TensorFlow: TensorFlow ships none.

The joint network scores every (frame t, label position u) pair of the
T x (U+1) lattice: ``logits[b, t, u, :]`` over the vocabulary and the blank.
A path starts at (0, 0); from (t, u) it emits label ``labels[u]`` (to
(t, u+1)) or a blank (to (t+1, u)), and it ends with the blank at
(T-1, U). The loss is -log of the summed probability of every path,
computed with the forward variables

    alpha[t, u] = logaddexp(alpha[t-1, u] + blank[t-1, u],
                            alpha[t, u-1] + emit[t, u-1]),   alpha[0, 0] = 0,

    loss = -(alpha[T-1, U] + blank[T-1, U]).

Row by row (a `tf.scan` over frames): within a row the recurrence along u
is a running log-sum: with ``c[u] = sum_{j<u} emit[t, j]``,
``alpha[t, u] = c[u] + logcumsumexp_{k<=u}(vertical[k] - c[k])``, so each
frame is a handful of vectorized ops and the scan runs T steps. Gradients
come from autodiff through the scan (it keeps each row: memory O(B T U) next
to the joint tensor's O(B T U V)).

Per-example lengths: alpha[t, u] depends only on t' <= t and u' <= u, so
padding beyond an example's lengths changes nothing it reads; its loss is
read at (T_b - 1, U_b).

Memory is the joint tensor's: B x T x (U+1) x V floats, held about four
times over (logits, log-softmax, their gradients). Measured once
(2026-12-07, this 2-core machine, loss and gradient in one tf.function on
random logits; a one-off script, not kept in bench/): B=8, T=400 frames
(16 s after 4x subsampling), U=200 characters, V=30 is a 77 MB joint
tensor and raised the process's peak RSS by 296 MB, in under a second.
"""

from __future__ import annotations

import tensorflow as tf

# log(0) for the lattice's unreachable start positions, finite so that no
# inf - inf arises in the running sums or their gradients.
_LOG_ZERO = -1e30


def transducer_loss(logits: tf.Tensor, labels: tf.Tensor, logit_lengths: tf.Tensor,
                    label_lengths: tf.Tensor, blank: int = 0) -> tf.Tensor:
    """Per-example RNN-T negative log-likelihood.

    Args:
      logits: [B, T, U+1, V] joint-network scores (unnormalized: a log-softmax
        over V is applied here), float32 or float64.
      labels: [B, U] int label ids (padding beyond `label_lengths` is ignored).
      logit_lengths: [B] frames of each example (1 <= T_b <= T).
      label_lengths: [B] labels of each example (0 <= U_b <= U).
      blank: the blank's index in V (negative: counted from the end).

    Returns:
      [B] losses, in the dtype of `logits`.
    """
    logits = tf.convert_to_tensor(logits)
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    vocab = tf.shape(log_probs)[-1]
    blank_index = blank % vocab if blank < 0 else blank
    blank_lp = log_probs[..., blank_index]                        # [B, T, U+1]
    labels = tf.cast(labels, tf.int32)
    # emit[b, t, u] = log P(labels[b, u] | t, u), for u < U.
    emitting = log_probs[:, :, :-1, :]
    emit = tf.gather(emitting, tf.broadcast_to(labels[:, None, :, None],
                                               tf.concat([tf.shape(emitting)[:3], [1]], 0)),
                     axis=-1, batch_dims=3)[..., 0]                 # [B, T, U]
    batch = tf.shape(log_probs)[0]
    positions = tf.shape(log_probs)[2]                             # U + 1
    # Exclusive running sums of the emissions along u: c[b, t, u].
    cumulative = tf.concat([tf.zeros_like(emit[:, :, :1]),
                            tf.cumsum(emit, axis=2)], axis=2)       # [B, T, U+1]

    def row(previous, frame):
        # `previous`: the vertical arrivals into this frame's row.
        c, blank_here = frame
        alpha = c + tf.math.cumulative_logsumexp(previous - c, axis=1)
        return alpha + blank_here

    first = tf.concat([tf.zeros([batch, 1], log_probs.dtype),
                       tf.fill([batch, positions - 1], tf.cast(_LOG_ZERO, log_probs.dtype))],
                      axis=1)
    # Time-major scan; each step returns alpha[t] + blank[t], the arrivals
    # into row t+1 (and, at the last frame, the path's end).
    arrivals = tf.scan(row, (tf.transpose(cumulative, [1, 0, 2]),
                             tf.transpose(blank_lp, [1, 0, 2])), initializer=first)
    last_frame = tf.cast(logit_lengths, tf.int32) - 1
    end = tf.stack([last_frame, tf.range(batch), tf.cast(label_lengths, tf.int32)], axis=1)
    return -tf.gather_nd(arrivals, end)
