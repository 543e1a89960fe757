"""Greedy transducer decoding recovers the labels a hand-built joint output says."""

import numpy as np
import tensorflow as tf

from tasks.asr.transducer_greedy import greedy_decode

BLANK, VOCAB, FRAMES, POSITIONS = 0, 5, 4, 8


def _hand_built(table):
    """A joint network that reads `table[b, t, u]` (u: labels emitted so far)
    and a prediction network that counts the labels fed back to it."""
    def predict(labels, emitted):
        del labels
        emitted = emitted + 1
        return tf.one_hot(emitted, POSITIONS), emitted

    def join(frame, prediction):
        return tf.einsum("bt,bu,btuv->bv", frame, prediction, tf.constant(table, tf.float32))
    return predict, join


def _table(wanted):
    """Logits preferring `wanted[b][(t, u)]`, and label 4 anywhere else."""
    table = np.zeros((len(wanted), FRAMES, POSITIONS, VOCAB), np.float32)
    table[..., 4] = 1.0
    for b, symbols in enumerate(wanted):
        for (t, u), symbol in symbols.items():
            table[b, t, u] = 0.0
            table[b, t, u, symbol] = 1.0
    return table


def test_greedy_decoding_recovers_the_hand_built_labels():
    table = _table([
        # Frame 0 emits 3 then blank; frame 1 emits 1, 2 then blank; then blanks.
        {(0, 0): 3, (0, 1): BLANK, (1, 1): 1, (1, 2): 2, (1, 3): BLANK,
         (2, 3): BLANK, (3, 3): BLANK},
        # Two frames long: frame 1 would emit forever, and is cut at 3 labels;
        # frames 2 and 3 (label 4 everywhere) are beyond its length.
        {(0, 0): BLANK, (1, 0): 2, (1, 1): 2, (1, 2): 2, (1, 3): 2},
    ])
    predict, join = _hand_built(table)
    frames = tf.eye(FRAMES, batch_shape=[2])  # frame t's features say t
    labels, lengths = greedy_decode(frames, [4, 2], predict, join,
                                    initial_state=tf.constant([-1, -1]), start_label=BLANK,
                                    blank=BLANK, max_symbols_per_frame=3)
    assert lengths.numpy().tolist() == [3, 3]
    assert labels.numpy()[0, :3].tolist() == [3, 1, 2]
    assert labels.numpy()[1, :3].tolist() == [2, 2, 2]
    assert (labels.numpy()[:, 3:] == -1).all()


def test_greedy_decoding_traces_in_a_graph():
    table = _table([{(t, u): BLANK for t in range(FRAMES) for u in range(POSITIONS)}])
    predict, join = _hand_built(table)
    decode = tf.function(lambda x, n: greedy_decode(
        x, n, predict, join, initial_state=tf.fill([tf.shape(x)[0]], -1),
        start_label=BLANK, blank=BLANK))
    labels, lengths = decode(tf.eye(FRAMES, batch_shape=[1]), tf.constant([4]))
    assert lengths.numpy().tolist() == [0] and (labels.numpy() == -1).all()
