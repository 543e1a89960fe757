"""Bad corpus flags and inputs give one CorpusError line (issue 10), not a traceback."""

import logging
import os
import shutil

import pytest

from tasks.asr import data as data_lib
from tasks.asr import librispeech
from tasks.asr.corpus import CorpusError


@pytest.fixture
def corpus_copy(tiny_corpus_dir, tmp_path) -> str:
    """A writable copy of the tiny corpus (train and test splits)."""
    copy = str(tmp_path / "corpus")
    shutil.copytree(tiny_corpus_dir, copy)
    return copy


def _first_chapter(root: str) -> tuple[str, str, str]:
    speaker = sorted(os.listdir(root))[0]
    (chapter,) = os.listdir(os.path.join(root, speaker))
    return speaker, chapter, os.path.join(root, speaker, chapter)


@pytest.mark.parametrize("flag", ["num_test_speakers", "num_train_speakers",
                                  "utterances_per_speaker"])
@pytest.mark.parametrize("corpus_dir", [None, "/some/librispeech"])
def test_zero_speakers_or_utterances_is_refused(flag, corpus_dir):
    with pytest.raises(CorpusError, match=f"^--{flag} must be >= 1, got 0$"):
        data_lib.CorpusConfig(corpus_dir=corpus_dir, **{flag: 0})


def test_unreadable_transcript_is_skipped_or_strict_error(corpus_copy):
    # Root reads any file whatever its mode, so make trans.txt a directory:
    # open() then fails for every user.
    train = os.path.join(corpus_copy, "train")
    speaker, chapter, chapter_dir = _first_chapter(train)
    trans = os.path.join(chapter_dir, f"{speaker}-{chapter}.trans.txt")
    num_audio = sum(n.endswith(".flac") for n in os.listdir(chapter_dir))
    os.remove(trans)
    os.mkdir(trans)

    corpus = librispeech.load_librispeech(train)
    assert dict(corpus.skipped) == {librispeech.UNREADABLE_TRANSCRIPT: num_audio}
    assert speaker not in corpus.client_ids
    with pytest.raises(CorpusError, match=f"^{trans}: unreadable transcript \\(Is a directory\\)$"):
        librispeech.load_librispeech(train, strict=True)


def test_unwritable_cache_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = str(blocker / "cache")
    config = data_lib.CorpusConfig(cache_dir=cache, num_train_speakers=2, num_test_speakers=1,
                                   utterances_per_speaker=2)
    with pytest.raises(CorpusError, match=f"^--corpus_cache_dir={cache} is not writable: "):
        data_lib.load_corpora(config)


@pytest.mark.parametrize("test_split", ["train", "overlap"])
def test_test_corpus_sharing_speakers_is_refused(corpus_copy, test_split):
    train = os.path.join(corpus_copy, "train")
    test = train
    if test_split == "overlap":
        # The real test split plus one training speaker.
        test = os.path.join(corpus_copy, "test")
        speaker = sorted(os.listdir(train))[0]
        shutil.copytree(os.path.join(train, speaker), os.path.join(test, speaker))
    config = data_lib.CorpusConfig(corpus_dir=train, test_corpus_dir=test)
    with pytest.raises(CorpusError, match="^--test_corpus_dir=.* shares .* speakers with"
                                          " --corpus_dir=.*: ") as e:
        data_lib.load_corpora(config)
    shared = sorted(os.listdir(train)) if test_split == "train" else [speaker]
    assert e.value.args[0].endswith(": " + ", ".join(shared[:5]) + (", ..." if len(shared) > 5
                                                                   else ""))


def test_dropped_characters_are_counted_logged_and_described(corpus_copy, caplog):
    from tasks.asr import task as task_lib
    from tasks.asr import text

    train = os.path.join(corpus_copy, "train")
    speaker, chapter, chapter_dir = _first_chapter(train)
    trans = os.path.join(chapter_dir, f"{speaker}-{chapter}.trans.txt")
    lines = open(trans, encoding="utf-8").read().splitlines()
    uid, words = lines[0].split(maxsplit=1)
    lines[0] = f"{uid} CAFÉ3 {words} 33"
    open(trans, "w", encoding="utf-8").write("\n".join(lines) + "\n")
    clean = text.encode(words)

    train_corpus = librispeech.load_librispeech(train)
    test_corpus = librispeech.load_librispeech(os.path.join(corpus_copy, "test"))
    with caplog.at_level(logging.WARNING):
        task = task_lib.AsrTask(train_corpus, test_corpus,
                                task_lib.AsrTaskConfig(model_size="tiny", batch_size=4))

    assert task.describe()["dropped_characters"] == {"train": {"é": 1, "3": 3}, "test": {}}
    warnings = [r.getMessage() for r in caplog.records if "out-of-vocabulary" in r.getMessage()]
    assert warnings == ["train split: dropped 4 out-of-vocabulary characters in 1 transcripts:"
                        " '3' x3, 'é' x1"]
    # Encoding is unchanged: the dropped characters simply vanish.
    assert text.encode(f"CAFÉ3 {words} 33") == text.encode("CAF") + [1] + clean
