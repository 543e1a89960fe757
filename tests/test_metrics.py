"""Tests for tasks.asr.metrics (jiwer WER/CER and the in-graph EditDistanceMetric)."""

import pytest
import tensorflow as tf

from tasks.asr import metrics

REFS = ["the cat sat", "hello world", "a b  c", "x y", "one"]
HYPS = ["the cat sit down", "", "a  b c d", " x  y ", "won one"]


def test_wer_cer_known_values():
    assert metrics.word_error_rate(["the cat sat"], ["the cat sit down"]) == pytest.approx(2 / 3)
    assert metrics.char_error_rate(["abcd"], ["abed"]) == pytest.approx(1 / 4)
    # Corpus-level: total edits / total reference tokens, empty hypothesis allowed.
    assert metrics.word_error_rate(["a b", "c d e f"], ["a b", ""]) == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        metrics.word_error_rate([""], ["a"])
    with pytest.raises(ValueError):
        metrics.char_error_rate(["a"], ["a", "b"])


@pytest.mark.parametrize("unit,reference_fn", [("word", metrics.word_error_rate),
                                               ("char", metrics.char_error_rate)])
def test_tf_metric_matches_jiwer_across_batches(unit, reference_fn):
    m = metrics.EditDistanceMetric(name=f"{unit}_er", unit=unit)
    m.update_state(tf.constant(REFS[:2]), tf.constant(HYPS[:2]))
    m.update_state(tf.constant(REFS[2:]), tf.constant(HYPS[2:]))
    assert float(m.result()) == pytest.approx(reference_fn(REFS, HYPS), abs=1e-6)
    m.reset_state()
    assert float(m.result()) == 0.0


def test_tf_metric_in_tf_function_and_sums_are_exact():
    m = metrics.EditDistanceMetric(unit="word")

    @tf.function
    def update(r, h):
        m.update_state(r, h)

    update(tf.constant(["the cat sat"]), tf.constant(["the cat sit down"]))
    errors, total = (float(v.numpy()) for v in m.variables)
    assert (errors, total) == (2.0, 3.0)
    config = m.get_config()
    assert config["unit"] == "word"
    assert metrics.EditDistanceMetric.from_config(config).unit == "word"
