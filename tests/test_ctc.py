"""Tests for tasks.asr.ctc (loss with blank 0, feasibility, greedy/beam decoding)."""

import numpy as np
import tensorflow as tf

from tasks.asr import ctc, text


def _frames_to_logits(frames: str, pad_to: int, scale: float = 10.0) -> tf.Tensor:
    """'_' = blank; one confident frame per character, padded with 'z' garbage."""
    ids = [0 if c == "_" else text.VOCAB.index(c) for c in frames]
    ids += [text.VOCAB.index("z")] * (pad_to - len(ids))  # beyond logit_lengths
    return tf.one_hot([ids], text.VOCAB_SIZE) * scale


def test_decoders_on_known_alignment():
    frames = "hh_e_ll_llo"
    logits = tf.concat([_frames_to_logits(frames, 14), _frames_to_logits("_a_b__", 14)], axis=0)
    lengths = tf.constant([len(frames), 6])
    assert ctc.greedy_decode(logits, lengths) == ["hello", "ab"]
    assert ctc.beam_search_decode(logits, lengths, beam_width=8) == ["hello", "ab"]
    assert ctc.greedy_decode_tf(logits, lengths).numpy().tolist() == [b"hello", b"ab"]
    in_graph = tf.function(ctc.greedy_decode_tf)(logits, lengths)
    assert in_graph.numpy().tolist() == [b"hello", b"ab"]


def test_blank_index_is_zero_not_last():
    # Apostrophe is the last class: TF's own decoders would treat it as blank.
    logits = _frames_to_logits("i'm", 3)
    assert ctc.greedy_decode(logits, tf.constant([3])) == ["i'm"]
    assert ctc.beam_search_decode(logits, tf.constant([3])) == ["i'm"]


def test_loss_finite_and_prefers_matching_alignment():
    labels = tf.constant([text.encode("hello") + [0, 0]])  # padded with 0
    label_lengths = tf.constant([5])
    good = _frames_to_logits("hh_e_ll_llo", 11, scale=3.0)
    wrong = _frames_to_logits("ww_o_rr_lld", 11, scale=3.0)
    lengths = tf.constant([11])
    good_loss = ctc.ctc_loss(labels, label_lengths, good, lengths)
    wrong_loss = ctc.ctc_loss(labels, label_lengths, wrong, lengths)
    assert good_loss.shape == (1,) and good_loss.dtype == tf.float32
    assert np.all(np.isfinite(good_loss)) and np.all(np.isfinite(wrong_loss))
    assert float(good_loss[0]) < float(wrong_loss[0])


def test_feasibility_rule():
    hello = text.encode("hello")
    assert not ctc.feasible_ctc_alignment(hello, 5)
    assert ctc.feasible_ctc_alignment(hello, 6)
    assert ctc.feasible_ctc_alignment(text.encode("aaa"), 5)
    assert not ctc.feasible_ctc_alignment(text.encode("aaa"), 4)
    assert ctc.feasible_ctc_alignment([], 0)


def test_feasibility_agrees_with_the_loss():
    labels, label_lengths = tf.constant([text.encode("hello")]), tf.constant([5])
    tight = _frames_to_logits("hel_lo", 6)
    assert float(ctc.ctc_loss(labels, label_lengths, tight, tf.constant([6]))[0]) < 1.0
    # One frame short (the blank between the two l's has no frame): no alignment.
    assert np.isinf(ctc.ctc_loss(labels, label_lengths, tight, tf.constant([5]))[0])


def _random_batch(seed: int):
    """Logits [4, 40, V] and labels of unequal lengths, padded with garbage
    (not blanks) beyond their lengths and frames beyond the logit lengths."""
    rng = np.random.default_rng(seed)
    logits = tf.constant(rng.standard_normal((4, 40, text.VOCAB_SIZE)).astype(np.float32) * 3)
    logit_lengths = tf.constant([40, 33, 25, 12])
    labels = tf.constant(rng.integers(1, text.VOCAB_SIZE, (4, 15)).astype(np.int32))
    label_lengths = tf.constant([15, 9, 1, 4])
    return labels, label_lengths, logits, logit_lengths


def _loss_and_gradient(loss_fn, labels, label_lengths, logits, logit_lengths):
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = loss_fn(labels, label_lengths, logits, logit_lengths)
        total = tf.reduce_sum(tf.where(tf.math.is_finite(loss), loss, 0.0))
    return loss.numpy(), tape.gradient(total, logits).numpy()


def test_kernel_and_portable_loss_and_gradient_equal_the_dense_ctc():
    # The reference: tf.nn.ctc_loss's dense-label algorithm (blank 0), an
    # algorithm different from both the kernel's (training) and the banded
    # one the on-device training artifact runs (`portable_ctc_loss`). The
    # labels' padding is garbage, not blanks: all must ignore it.
    batch = _random_batch(0)
    labels, label_lengths, logits, logit_lengths = batch
    ours, our_grad = _loss_and_gradient(ctc.ctc_loss, *batch)
    portable, portable_grad = _loss_and_gradient(ctc.portable_ctc_loss, *batch)
    padded_with_blank = tf.where(tf.sequence_mask(label_lengths, 15), labels, 0)
    dense = lambda _, *rest: tf.nn.ctc_loss(padded_with_blank, logits, label_lengths,
                                            logit_lengths, logits_time_major=False,
                                            blank_index=0)
    reference, reference_grad = _loss_and_gradient(dense, *batch)
    np.testing.assert_allclose(ours, reference, rtol=1e-5)
    np.testing.assert_allclose(portable, reference, rtol=1e-6)
    # Gradients are O(1) here (peaky logits): float32 rounding of the algorithms.
    np.testing.assert_allclose(our_grad, reference_grad, atol=1e-4)
    np.testing.assert_allclose(portable_grad, reference_grad, atol=1e-4)
    # Frames beyond an example's length get no gradient.
    assert not our_grad[3, 12:].any() and not portable_grad[3, 12:].any()


def test_portable_loss_on_repeated_labels_and_infeasible_ones_is_the_kernels():
    # Repeats are where a path may not skip the blank between two labels;
    # "hello" in 5 frames has no path at all (the kernel's loss: inf).
    labels = tf.constant([text.encode("aaabba"), text.encode("hello") + [7],
                          text.encode("hello") + [7]])
    label_lengths = tf.constant([6, 5, 5])
    rng = np.random.default_rng(3)
    logits = tf.constant(rng.standard_normal((3, 12, text.VOCAB_SIZE)).astype(np.float32) * 2)
    logit_lengths = tf.constant([12, 6, 5])
    kernel, kernel_grad = _loss_and_gradient(ctc.ctc_loss, labels, label_lengths, logits,
                                             logit_lengths)
    portable, portable_grad = _loss_and_gradient(ctc.portable_ctc_loss, labels,
                                                 label_lengths, logits, logit_lengths)
    assert np.isinf(kernel[2]) and np.isinf(portable[2])
    np.testing.assert_allclose(portable[:2], kernel[:2], rtol=1e-5)
    np.testing.assert_allclose(portable_grad, kernel_grad, atol=1e-5)
    assert not portable_grad[2].any()


def test_loss_in_a_tf_function_equals_eager():
    batch = _random_batch(1)
    eager = ctc.ctc_loss(*batch).numpy()
    np.testing.assert_array_equal(tf.function(ctc.ctc_loss)(*batch).numpy(), eager)
