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


def test_feasibility_agrees_with_tf_loss():
    labels, label_lengths = tf.constant([text.encode("hello")]), tf.constant([5])
    tight = _frames_to_logits("hel_lo", 6)
    assert float(ctc.ctc_loss(labels, label_lengths, tight, tf.constant([6]))[0]) < 1.0
    # One frame short: TF floors log(0) at log(1e-307) instead of returning inf.
    assert float(ctc.ctc_loss(labels, label_lengths, tight, tf.constant([5]))[0]) > 500.0
