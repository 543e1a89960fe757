"""LibriSpeech-layout loader: indexing, tf.data decoding, and bad-file handling."""

import logging
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf
import tensorflow_io as tfio

from tasks.asr import librispeech
from tasks.asr.corpus import CorpusError, SpeechCorpus
from tasks.asr.librispeech import load_librispeech


@pytest.fixture(scope="module")
def train_dir(tiny_corpus_dir) -> str:
    return os.path.join(tiny_corpus_dir, "train")


@pytest.fixture(scope="module")
def corpus(train_dir) -> SpeechCorpus:
    return load_librispeech(train_dir)


def read_trans(path: str) -> dict[str, str]:
    with open(path, encoding="utf-8") as f:
        return dict(line.rstrip("\n").split(" ", 1) for line in f if line.strip())


def test_speakers_are_clients(corpus, train_dir, tiny_corpus_params):
    assert corpus.client_ids == sorted(os.listdir(train_dir))
    assert not corpus.skipped
    n = tiny_corpus_params["utterances_per_speaker"]
    for client_id in corpus.client_ids:
        utterances = corpus.utterances(client_id)
        assert len(utterances) == n
        (chapter,) = os.listdir(os.path.join(train_dir, client_id))
        chapter_dir = os.path.join(train_dir, client_id, chapter)
        trans = read_trans(os.path.join(chapter_dir, f"{client_id}-{chapter}.trans.txt"))
        for u in utterances:
            assert u.speaker_id == client_id
            assert u.utterance_id.startswith(f"{client_id}-{chapter}-")
            assert u.transcript == trans[u.utterance_id]
            assert u.sample_rate == 16000
            assert u.num_samples == sf.info(u.audio_path).frames
            assert u.duration_s == pytest.approx(u.num_samples / 16000)


def test_tf_dataset_decodes_exactly_like_soundfile(corpus):
    client_id = corpus.client_ids[0]
    dataset = corpus.create_tf_dataset_for_client(client_id)
    assert dataset.element_spec == {
        "audio": tf.TensorSpec([None], tf.float32),
        "transcript": tf.TensorSpec([], tf.string),
    }
    elements = list(dataset.as_numpy_iterator())
    utterances = corpus.utterances(client_id)
    assert len(elements) == len(utterances)
    for element, u in zip(elements, utterances):
        reference, rate = sf.read(u.audio_path, dtype="int16")
        assert rate == 16000
        pcm = tfio.audio.decode_flac(tf.io.read_file(u.audio_path), dtype=tf.int16).numpy()
        np.testing.assert_array_equal(pcm[:, 0], reference)
        np.testing.assert_array_equal(element["audio"], reference.astype(np.float32) / 32768.0)
        assert element["audio"].min() >= -1.0 and element["audio"].max() < 1.0
        assert element["transcript"].decode() == u.transcript


def test_dataset_from_all_clients_and_filtering(corpus):
    all_clients = corpus.create_tf_dataset_from_all_clients()
    assert all_clients.cardinality().numpy() == corpus.num_utterances
    first = corpus.client_ids[0]
    only_first = corpus.filter_utterances(lambda u: u.speaker_id == first)
    assert only_first.client_ids == [first]
    assert only_first.num_utterances == len(corpus.utterances(first))
    longest = max(u.duration_s for u in corpus.all_utterances())
    num_longest = sum(u.duration_s == longest for u in corpus.all_utterances())
    shorter = corpus.filter_utterances(lambda u: u.duration_s < longest)
    assert shorter.num_utterances == corpus.num_utterances - num_longest
    assert corpus.filter_utterances(lambda u: False).client_ids == []
    assert corpus.num_utterances == 24  # the original view is untouched


def test_test_split_loads_with_held_out_speakers(tiny_corpus_dir, corpus):
    test = load_librispeech(os.path.join(tiny_corpus_dir, "test"))
    assert test.client_ids and not set(test.client_ids) & set(corpus.client_ids)


# ----------------------------------------------------------------------------- bad files


def _first_chapter(root: str) -> tuple[str, str, str]:
    speaker = sorted(os.listdir(root))[0]
    (chapter,) = os.listdir(os.path.join(root, speaker))
    return speaker, chapter, os.path.join(root, speaker, chapter)


def _flac(root: str, index: int = 2) -> str:
    speaker, chapter, chapter_dir = _first_chapter(root)
    return os.path.join(chapter_dir, f"{speaker}-{chapter}-{index:04d}.flac")


def _trans(root: str) -> str:
    speaker, chapter, chapter_dir = _first_chapter(root)
    return os.path.join(chapter_dir, f"{speaker}-{chapter}.trans.txt")


def _truncate(root):
    path = _flac(root)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    return path


def _random_bytes(root):
    path = _flac(root)
    open(path, "wb").write(np.random.default_rng(0).bytes(4000))
    return path


def _zero_bytes(root):
    path = _flac(root)
    open(path, "wb").close()
    return path


def _non_utf8_transcript(root):
    path = _trans(root)
    lines = open(path, "rb").read().splitlines(keepends=True)
    lines[1] = lines[1].rstrip(b"\n") + b" CAF\xc9\n"  # latin-1, not UTF-8
    open(path, "wb").write(b"".join(lines))
    return path


def _rewrite_line(root, index, replacement):
    path = _trans(root)
    lines = open(path, encoding="utf-8").read().splitlines()
    lines[index] = replacement(lines[index])
    text = "".join(line + "\n" for line in lines if line is not None)
    open(path, "w", encoding="utf-8").write(text)
    return path


def _empty_transcript(root):
    return _rewrite_line(root, 2, lambda line: line.split(" ")[0] + "  ")


def _missing_transcript(root):
    _rewrite_line(root, 2, lambda line: None)
    return _flac(root)


def _missing_audio(root):
    os.remove(_flac(root))
    return _flac(root)  # named in the error through its utterance id


def _wrong_sample_rate(root):
    path = _flac(root)
    samples, _ = sf.read(path, dtype="int16")
    sf.write(path, samples, 8000, subtype="PCM_16", format="FLAC")
    return path


def _stereo(root):
    path = _flac(root)
    samples, rate = sf.read(path, dtype="int16")
    sf.write(path, np.stack([samples, samples], axis=1), rate, subtype="PCM_16", format="FLAC")
    return path


BAD_FILE_CASES = {
    # name: (break the corpus -> file the error must name, reason, utterances skipped)
    "truncated_flac": (_truncate, librispeech.TRUNCATED_AUDIO, 1),
    "random_bytes": (_random_bytes, librispeech.UNREADABLE_AUDIO, 1),
    "zero_bytes": (_zero_bytes, librispeech.EMPTY_AUDIO, 1),
    # An undecodable transcript file loses its whole chapter (6 utterances).
    "non_utf8_transcript": (_non_utf8_transcript, librispeech.TRANSCRIPT_NOT_UTF8, 6),
    "empty_transcript_line": (_empty_transcript, librispeech.EMPTY_TRANSCRIPT, 1),
    "missing_transcript_line": (_missing_transcript, librispeech.MISSING_TRANSCRIPT, 1),
    "missing_audio": (_missing_audio, librispeech.MISSING_AUDIO, 1),
    "wrong_sample_rate": (_wrong_sample_rate, librispeech.WRONG_SAMPLE_RATE, 1),
    "not_mono": (_stereo, librispeech.NOT_MONO, 1),
}


@pytest.fixture
def corpus_copy(train_dir, tmp_path) -> str:
    copy = str(tmp_path / "train")
    shutil.copytree(train_dir, copy)
    return copy


@pytest.mark.parametrize("case", sorted(BAD_FILE_CASES))
def test_bad_file_is_skipped_or_raises_under_strict(case, corpus_copy, caplog):
    breaker, reason, count = BAD_FILE_CASES[case]
    bad_path = breaker(corpus_copy)

    with caplog.at_level(logging.WARNING):
        corpus = load_librispeech(corpus_copy)
    assert dict(corpus.skipped) == {reason: count}
    assert corpus.num_utterances == 24 - count
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"skipped {count} of 24 utterances in {corpus_copy}: {count} {reason}"]

    with pytest.raises(CorpusError) as error:
        load_librispeech(corpus_copy, strict=True)
    message = str(error.value)
    assert "\n" not in message
    assert reason in message
    # Names the file: the audio itself, or (for transcript problems) the trans.txt and utterance.
    stem = os.path.basename(bad_path)[: -len(".flac")] if bad_path.endswith(".flac") else None
    assert bad_path in message or (stem and stem in message and ".trans.txt" in message), message


def test_several_problems_in_one_summary(corpus_copy, caplog):
    _zero_bytes(corpus_copy)
    _rewrite_line(corpus_copy, 4, lambda line: None)
    with caplog.at_level(logging.WARNING):
        corpus = load_librispeech(corpus_copy)
    assert corpus.skipped == {librispeech.EMPTY_AUDIO: 1, librispeech.MISSING_TRANSCRIPT: 1}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"skipped 2 of 24 utterances in {corpus_copy}: 1 empty audio file, 1 missing transcript"
    ]


def test_clean_corpus_logs_nothing(train_dir, caplog):
    with caplog.at_level(logging.WARNING):
        load_librispeech(train_dir, strict=True)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_nothing_usable_is_an_error(train_dir):
    # Every file is 16 kHz, so asking for 8 kHz leaves nothing: an error, not an empty corpus.
    with pytest.raises(CorpusError, match="has no usable utterances .*24 wrong sample rate"):
        load_librispeech(train_dir, sample_rate=8000)


def test_missing_and_empty_roots(tmp_path):
    with pytest.raises(CorpusError, match=r"corpus directory .*nowhere does not exist"):
        load_librispeech(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorpusError, match="contains no LibriSpeech-layout utterances"):
        load_librispeech(str(empty))
    (empty / "1000" / "2000").mkdir(parents=True)
    (empty / "README.TXT").write_text("not a corpus")
    with pytest.raises(CorpusError, match="contains no LibriSpeech-layout utterances"):
        load_librispeech(str(empty))
