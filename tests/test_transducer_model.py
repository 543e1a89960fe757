"""The transducer's prediction and joint networks: decoding steps equal
training's teacher-forced pass, and loss + decoding learn a sequence."""

import numpy as np
import tensorflow as tf

from tasks.asr.transducer_greedy import greedy_decode
from tasks.asr.transducer_loss import transducer_loss
from tasks.asr.transducer_model import JointNetwork, PredictionNetwork

VOCAB, BLANK = 6, 0


def test_decoding_steps_equal_the_teacher_forced_pass():
    tf.keras.utils.set_random_seed(0)
    prediction, joint = PredictionNetwork(VOCAB, 8, 16), JointNetwork(12, VOCAB)
    labels = tf.constant([[3, 1, 4], [2, 2, 5]])
    encoder_out = tf.random.normal([2, 5, 7])
    forced = prediction(labels)                       # [B, U+1, units]
    logits = joint(encoder_out, forced)               # [B, T, U+1, V]
    assert logits.shape == (2, 5, 4, VOCAB)
    out, state = prediction.step(tf.fill([2], BLANK), prediction.initial_state(2))
    for u in range(4):
        np.testing.assert_allclose(out.numpy(), forced[:, u].numpy(), atol=1e-6)
        for t in range(5):
            np.testing.assert_allclose(joint.step(encoder_out[:, t], out).numpy(),
                                       logits[:, t, u].numpy(), atol=1e-5)
        if u < 3:
            out, state = prediction.step(labels[:, u], state)


def test_loss_and_greedy_decoding_learn_a_label_sequence():
    # Fixed "encoder" frames; the networks learn to transduce them into the
    # labels with the RNN-T loss, and greedy decoding then reads them back.
    tf.keras.utils.set_random_seed(1)
    prediction, joint = PredictionNetwork(VOCAB, 8, 16), JointNetwork(16, VOCAB)
    encoder_out = tf.random.normal([2, 6, 8])
    labels = tf.constant([[1, 2, 3], [4, 5, 0]])
    label_lengths, frames = tf.constant([3, 2]), tf.constant([6, 4])
    optimizer = tf.keras.optimizers.Adam(0.03)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(transducer_loss(
                joint(encoder_out, prediction(labels)), labels, frames, label_lengths,
                blank=BLANK))
        variables = prediction.trainable_variables + joint.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    first = float(train_step())
    for _ in range(150):
        last = float(train_step())
    assert last < 0.05 * first, (first, last)
    decoded, lengths = greedy_decode(encoder_out, frames, prediction.step, joint.step,
                                     prediction.initial_state(2), start_label=BLANK,
                                     blank=BLANK)
    assert lengths.numpy().tolist() == [3, 2]
    assert decoded.numpy()[0, :3].tolist() == [1, 2, 3]
    assert decoded.numpy()[1, :2].tolist() == [4, 5]
