"""Tests for tasks.asr.text (vocabulary, normalization, Python/TF encoding)."""

import pytest
import tensorflow as tf

from tasks.asr import text

SAMPLES = ["Hello, World!", "  IT'S\tA  test\n", "naïve café-au-lait", "", "123 ..."]


def test_vocab_layout():
    assert text.VOCAB_SIZE == 29
    assert text.VOCAB[0] == text.BLANK and text.BLANK_ID == 0
    assert text.VOCAB[1] == " " and text.VOCAB[2] == "a" and text.VOCAB[27] == "z"
    assert text.VOCAB[28] == "'"


def test_normalize():
    assert text.normalize_transcript("Hello, World!") == "hello world"
    assert text.normalize_transcript("  IT'S\tA  test\n") == "it's a test"
    assert text.normalize_transcript("naïve café-au-lait") == "nave cafaulait"
    assert text.normalize_transcript("123 ...") == ""


@pytest.mark.parametrize("sample", SAMPLES)
def test_tf_normalize_matches_python(sample):
    got = text.normalize_transcript_tf(tf.constant(sample)).numpy().decode()
    assert got == text.normalize_transcript(sample)


def test_encode_decode_roundtrip():
    ids = text.encode("Hello world")
    assert 0 not in ids
    assert text.decode(ids) == "hello world"
    assert text.decode([0, 9, 0, 10]) == "hi"  # blanks skipped
    with pytest.raises(ValueError):
        text.encode("Hi", normalize=False)
    with pytest.raises(ValueError):
        text.decode([29])


@pytest.mark.parametrize("sample", SAMPLES)
def test_encode_tf_matches_python(sample):
    ids = text.encode_tf(tf.constant(sample))
    assert ids.dtype == tf.int32
    assert ids.numpy().tolist() == text.encode(sample)


def test_encode_tf_in_dataset_and_decode_tf():
    ds = tf.data.Dataset.from_tensor_slices(["Hi there", "A B"]).map(text.encode_tf)
    got = [x.numpy().tolist() for x in ds]
    assert got == [text.encode("hi there"), text.encode("a b")]
    ragged = tf.ragged.constant([text.encode("hi"), []], dtype=tf.int32)
    assert text.decode_tf(ragged).numpy().tolist() == [b"hi", b""]
