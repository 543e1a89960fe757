"""The RNN-T loss: every alignment summed, its gradient, and published values."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tasks.asr.transducer_loss import transducer_loss


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _brute_force_loss(logits, labels, frames, num_labels, blank):
    """-log of the summed probability of every alignment, one by one."""
    lp = _log_softmax(logits)
    moves = frames - 1 + num_labels  # the path's last blank comes after these
    scores = []
    for emits in itertools.combinations(range(moves), num_labels):
        t = u = 0
        score = 0.0
        for step in range(moves):
            if step in emits:
                score += lp[t, u, labels[u]]
                u += 1
            else:
                score += lp[t, u, blank]
                t += 1
        scores.append(score + lp[frames - 1, num_labels, blank])
    return -np.logaddexp.reduce(scores)


@pytest.mark.parametrize("blank", [0, 4])
def test_the_loss_sums_every_alignment_with_unequal_lengths(blank):
    rng = np.random.default_rng(blank)
    batch, frames, positions, vocab = 4, 4, 4, 5  # T <= 4, U <= 3
    logits = rng.normal(size=(batch, frames, positions, vocab)) * 2
    labels = rng.integers(1, vocab - 1, size=(batch, positions - 1))
    logit_lengths = np.array([4, 1, 3, 2])
    label_lengths = np.array([3, 2, 0, 1])
    got = transducer_loss(logits, labels, logit_lengths, label_lengths, blank=blank).numpy()
    expected = [_brute_force_loss(logits[b], labels[b], logit_lengths[b], label_lengths[b],
                                  blank) for b in range(batch)]
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # float32 as in training.
    got32 = transducer_loss(logits.astype(np.float32), labels, logit_lengths,
                            label_lengths, blank=blank).numpy()
    np.testing.assert_allclose(got32, expected, rtol=1e-5)


def test_the_gradient_is_the_numerical_gradient():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 3, 4))
    labels = np.array([[1, 2], [3, 3]])

    def loss(x):
        return tf.reduce_sum(transducer_loss(x, labels, [3, 2], [2, 1]))

    theoretical, numerical = tf.test.compute_gradient(loss, [tf.constant(logits)])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-7)


def _torchaudio_case(name):
    """Costs and gradients from torchaudio's RNN-T tests (pytorch/audio,
    test/torchaudio_unittest/common_utils/rnnt_utils.py,
    `get_B1_T2_U3_D5_data` and `get_B2_T4_U3_D3_data`; fused log-softmax)."""
    if name == "B1_T2_U3_D5":
        logits = np.array([
            0.1, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.6, 0.1, 0.1, 0.1, 0.1, 0.2, 0.8, 0.1,
            0.1, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.1, 0.1, 0.7, 0.1, 0.2, 0.1, 0.1,
        ]).reshape(1, 2, 3, 5)
        grads = np.array([
            0.17703132, -0.39992708, 0.17703132, 0.17703132, -0.13116692,
            0.12247062, 0.12247062, -0.181684, 0.12247062, -0.1857276,
            0.06269141, 0.06269141, 0.06928471, 0.12624498, -0.32091248,
            0.05456069, -0.2182428, 0.05456069, 0.05456069, 0.05456069,
            0.12073967, 0.12073967, -0.48295838, 0.12073967, 0.12073967,
            0.30741188, 0.16871123, 0.18645471, 0.16871123, -0.83128875,
        ]).reshape(1, 2, 3, 5)
        return (logits, [[1, 2]], [2], [2], -1), [5.09566688538], grads
    logits = np.array([
        0.065357, 0.787530, 0.081592, 0.529716, 0.750675, 0.754135, 0.609764, 0.868140,
        0.622532, 0.668522, 0.858039, 0.164539, 0.989780, 0.944298, 0.603168, 0.946783,
        0.666203, 0.286882, 0.094184, 0.366674, 0.736168, 0.166680, 0.714154, 0.399400,
        0.535982, 0.291821, 0.612642, 0.324241, 0.800764, 0.524106, 0.779195, 0.183314,
        0.113745, 0.240222, 0.339470, 0.134160, 0.505562, 0.051597, 0.640290, 0.430733,
        0.829473, 0.177467, 0.320700, 0.042883, 0.302803, 0.675178, 0.569537, 0.558474,
        0.083132, 0.060165, 0.107958, 0.748615, 0.943918, 0.486356, 0.418199, 0.652408,
        0.024243, 0.134582, 0.366342, 0.295830, 0.923670, 0.689929, 0.741898, 0.250005,
        0.603430, 0.987289, 0.592606, 0.884672, 0.543450, 0.660770, 0.377128, 0.358021,
    ]).reshape(2, 4, 3, 3)
    grads = np.array([
        -0.186844, -0.062555, 0.249399, -0.203377, 0.202399, 0.000977, -0.141016, 0.079123,
        0.061893, -0.011552, -0.081280, 0.092832, -0.154257, 0.229433, -0.075176, -0.246593,
        0.146405, 0.100188, -0.012918, -0.061593, 0.074512, -0.055986, 0.219831, -0.163845,
        -0.497627, 0.209240, 0.288387, 0.013605, -0.030220, 0.016615, 0.113925, 0.062781,
        -0.176706, -0.667078, 0.367659, 0.299419, -0.356344, -0.055347, 0.411691, -0.096922,
        0.029459, 0.067463, -0.063518, 0.027654, 0.035863, -0.154499, -0.073942, 0.228441,
        -0.166790, -0.000088, 0.166878, -0.172370, 0.105565, 0.066804, 0.023875, -0.118256,
        0.094381, -0.104707, -0.108934, 0.213642, -0.369844, 0.180118, 0.189726, 0.025714,
        -0.079462, 0.053748, 0.122328, -0.238789, 0.116460, -0.598687, 0.302203, 0.296484,
    ]).reshape(2, 4, 3, 3)
    return (logits, [[1, 2], [1, 1]], [4, 4], [2, 2], 0), \
        [4.2806528590890736, 3.9384369822503591], grads


@pytest.mark.parametrize("name", ["B1_T2_U3_D5", "B2_T4_U3_D3"])
def test_costs_and_gradients_match_torchaudio(name):
    (logits, labels, frames, lengths, blank), costs, grads = _torchaudio_case(name)
    x = tf.constant(logits, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = transducer_loss(x, labels, frames, lengths, blank=blank)
        total = tf.reduce_sum(loss)
    np.testing.assert_allclose(loss.numpy(), costs, rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(total, x).numpy(), grads, atol=1e-5)


def test_the_loss_traces_in_a_graph_with_unknown_shapes():
    # As in training: a tf.function over batches of any size and length.
    spec = tf.TensorSpec([None, None, None, 5], tf.float32)
    fn = tf.function(transducer_loss, input_signature=[
        spec, tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([None], tf.int32)])
    (logits, labels, frames, lengths, _), costs, _ = _torchaudio_case("B2_T4_U3_D3")
    padded = np.pad(logits, [(0, 0), (0, 0), (0, 0), (0, 2)], constant_values=-1e9)
    got = fn(tf.constant(padded, tf.float32), tf.constant(labels, tf.int32),
             tf.constant(frames, tf.int32), tf.constant(lengths, tf.int32))
    np.testing.assert_allclose(got.numpy(), costs, rtol=1e-5)
