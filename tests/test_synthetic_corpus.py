"""The built-in synthetic corpus: layout, speaker split, determinism, caching."""

import hashlib
import json
import os
import re

import pytest
import soundfile as sf

from tasks.asr import sentences, synthetic_corpus
from tasks.asr.corpus import CorpusError

SMALL = {"num_train_speakers": 2, "num_test_speakers": 1, "utterances_per_speaker": 2}


def file_hashes(root: str) -> dict[str, str]:
    """Relative path -> sha256 of every file under root."""
    hashes = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


def read_manifest(root: str) -> dict:
    with open(os.path.join(root, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)


def test_layout_is_librispeech(tiny_corpus_dir, tiny_corpus_params):
    assert sorted(os.listdir(tiny_corpus_dir)) == ["manifest.json", "test", "train"]
    n = tiny_corpus_params["utterances_per_speaker"]
    for split in ("train", "test"):
        split_dir = os.path.join(tiny_corpus_dir, split)
        for speaker in os.listdir(split_dir):
            assert speaker.isdigit()
            (chapter,) = os.listdir(os.path.join(split_dir, speaker))
            assert chapter.isdigit()
            chapter_dir = os.path.join(split_dir, speaker, chapter)
            expected_audio = [f"{speaker}-{chapter}-{i:04d}.flac" for i in range(n)]
            trans_name = f"{speaker}-{chapter}.trans.txt"
            assert sorted(os.listdir(chapter_dir)) == sorted(expected_audio + [trans_name])
            with open(os.path.join(chapter_dir, trans_name), encoding="utf-8") as f:
                lines = f.read().splitlines()
            assert [line.split(" ", 1)[0] + ".flac" for line in lines] == expected_audio
            for line in lines:
                words = line.split(" ", 1)[1].split(" ")
                assert sentences.MIN_WORDS <= len(words) <= sentences.MAX_WORDS
                assert all(re.fullmatch(r"[A-Z']+", w) for w in words), line
            for name in expected_audio:
                info = sf.info(os.path.join(chapter_dir, name))
                assert (info.format, info.subtype) == ("FLAC", "PCM_16")
                assert (info.samplerate, info.channels) == (16000, 1)


def test_manifest_and_speaker_split(tiny_corpus_dir, tiny_corpus_params):
    manifest = read_manifest(tiny_corpus_dir)
    assert manifest["generator_version"] == synthetic_corpus.GENERATOR_VERSION
    assert manifest["params"] == tiny_corpus_params
    train = set(os.listdir(os.path.join(tiny_corpus_dir, "train")))
    test = set(os.listdir(os.path.join(tiny_corpus_dir, "test")))
    assert len(train) == tiny_corpus_params["num_train_speakers"]
    assert len(test) == tiny_corpus_params["num_test_speakers"]
    assert not train & test
    speakers = manifest["speakers"]
    assert {s["speaker_id"] for s in speakers if s["split"] == "train"} == train
    assert {s["speaker_id"] for s in speakers if s["split"] == "test"} == test
    # Every speaker is a distinct voice, and (with <= 10 speakers) a distinct topic.
    voices = {(s["accent"], s["variant"], s["pitch"], s["rate"]) for s in speakers}
    assert len(voices) == len(speakers)
    assert len({s["topic"] for s in speakers}) == len(speakers)
    for s in speakers:
        assert synthetic_corpus.PITCH_RANGE[0] <= s["pitch"] <= synthetic_corpus.PITCH_RANGE[1]
        assert synthetic_corpus.RATE_RANGE[0] <= s["rate"] <= synthetic_corpus.RATE_RANGE[1]
    n = tiny_corpus_params["utterances_per_speaker"]
    assert manifest["splits"]["train"]["num_utterances"] == len(train) * n


def _transcripts(split_dir: str) -> dict[str, str]:
    out = {}
    for dirpath, _, names in os.walk(split_dir):
        for name in names:
            if name.endswith(".trans.txt"):
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    for line in f:
                        utterance_id, text = line.rstrip("\n").split(" ", 1)
                        out[utterance_id] = text
    return out


def test_test_sentences_are_new(tiny_corpus_dir):
    train = set(_transcripts(os.path.join(tiny_corpus_dir, "train")).values())
    test = set(_transcripts(os.path.join(tiny_corpus_dir, "test")).values())
    assert test and not train & test


def test_enough_ctc_frames_per_character(tiny_corpus_dir):
    # CTC at 40 ms per output frame needs a frame per character plus a blank between repeats.
    for split in ("train", "test"):
        for utterance_id, text in _transcripts(os.path.join(tiny_corpus_dir, split)).items():
            speaker, chapter, _ = utterance_id.split("-")
            path = os.path.join(tiny_corpus_dir, split, speaker, chapter, utterance_id + ".flac")
            frames = sf.info(path).frames / (0.04 * 16000)
            needed = len(text) + sum(a == b for a, b in zip(text, text[1:]))
            assert needed < 0.9 * frames, (utterance_id, needed, frames)


def test_deterministic_for_any_worker_count(tiny_corpus_dir, tiny_corpus_params, tmp_path):
    again = synthetic_corpus.generate_synthetic_corpus(
        str(tmp_path / "again"), num_workers=2, **tiny_corpus_params
    )
    assert file_hashes(again) == file_hashes(tiny_corpus_dir)


def test_different_seed_gives_different_corpus(tmp_path):
    generate = synthetic_corpus.generate_synthetic_corpus
    a = file_hashes(generate(str(tmp_path / "a"), seed=0, num_workers=1, **SMALL))
    b = file_hashes(generate(str(tmp_path / "b"), seed=1, num_workers=1, **SMALL))
    flac_a = {k: v for k, v in a.items() if k.endswith(".flac")}
    flac_b = {k: v for k, v in b.items() if k.endswith(".flac")}
    assert len(flac_a) == len(flac_b) == 6
    assert not set(flac_a.values()) & set(flac_b.values())


def test_refuses_non_empty_root(tmp_path):
    (tmp_path / "something").write_text("x")
    with pytest.raises(FileExistsError):
        synthetic_corpus.generate_synthetic_corpus(str(tmp_path), num_workers=1, **SMALL)


def _mtimes(root: str) -> dict[str, int]:
    return {
        os.path.join(dirpath, name): os.stat(os.path.join(dirpath, name)).st_mtime_ns
        for dirpath, _, names in os.walk(root)
        for name in names
    }


def test_ensure_generates_once_then_reuses(tmp_path):
    cache = str(tmp_path / "cache")
    first = synthetic_corpus.ensure_synthetic_corpus(cache, num_workers=1, **SMALL)
    name = os.path.basename(first)
    assert name == synthetic_corpus.corpus_dir_name(**SMALL)
    assert name.startswith(f"espeak-v{synthetic_corpus.GENERATOR_VERSION}-")
    assert os.listdir(cache) == [name]  # no temporary directory left behind
    before = _mtimes(first)
    second = synthetic_corpus.ensure_synthetic_corpus(cache, num_workers=1, **SMALL)
    assert second == first
    assert _mtimes(first) == before
    assert os.listdir(cache) == [name]
    # Different parameters get their own directory.
    other = synthetic_corpus.ensure_synthetic_corpus(cache, num_workers=1, **{**SMALL, "seed": 5})
    assert other != first and os.path.isdir(other)


def test_leftover_temp_dir_from_a_crash_is_ignored(tmp_path):
    cache = tmp_path / "cache"
    name = synthetic_corpus.corpus_dir_name(**SMALL)
    leftover = cache / f".{name}.tmp-crashed"
    (leftover / "train" / "1000" / "10000").mkdir(parents=True)
    (leftover / "train" / "1000" / "10000" / "1000-10000-0000.flac").write_bytes(b"half")
    corpus = synthetic_corpus.ensure_synthetic_corpus(str(cache), num_workers=1, **SMALL)
    assert corpus == str(cache / name)
    assert read_manifest(corpus)["params"]["seed"] == 0
    first_flac = os.path.join(corpus, "train", "1000", "10000", "1000-10000-0000.flac")
    assert sf.info(first_flac).frames > 0
    assert leftover.exists()  # left alone: it might belong to a run still in progress


def test_final_dir_without_manifest_is_not_used(tmp_path):
    cache = tmp_path / "cache"
    (cache / synthetic_corpus.corpus_dir_name(**SMALL) / "train").mkdir(parents=True)
    with pytest.raises(CorpusError, match="no matching manifest.json"):
        synthetic_corpus.ensure_synthetic_corpus(str(cache), num_workers=1, **SMALL)


def test_public_speakers_are_neither_clients_nor_held_out():
    without = synthetic_corpus.plan_speakers(**SMALL)
    specs = synthetic_corpus.plan_speakers(**SMALL, num_public_speakers=3)
    # Drawn last: the clients and held-out speakers are the same as without them.
    assert specs[:len(without)] == without
    public = [s for s in specs if s.split == synthetic_corpus.PUBLIC_SPLIT]
    others = [s for s in specs if s.split != synthetic_corpus.PUBLIC_SPLIT]
    assert len(public) == 3 and len(others) == len(without)
    assert not {s.speaker_id for s in public} & {s.speaker_id for s in others}
    def voice(s):
        return (s.accent, s.variant, s.pitch, s.rate)
    assert not {voice(s) for s in public} & {voice(s) for s in others}
    said_by_others = {t for s in others for t in s.sentences}
    assert not {t for s in public for t in s.sentences} & said_by_others
    # A corpus without public speakers keeps its cache name (and bytes).
    assert (synthetic_corpus.corpus_dir_name(**SMALL, num_public_speakers=0)
            == synthetic_corpus.corpus_dir_name(**SMALL)
            != synthetic_corpus.corpus_dir_name(**SMALL, num_public_speakers=3))


def test_training_on_the_public_split_loads_only_public_speakers(tmp_path):
    from tasks.asr import data
    config = data.CorpusConfig(cache_dir=str(tmp_path), num_public_speakers=1,
                               train_split="public", **SMALL)
    train, test = data.load_corpora(config, verify_audio=False)
    manifest = read_manifest(synthetic_corpus.ensure_synthetic_corpus(
        str(tmp_path), num_public_speakers=1, **SMALL))
    by_split = {}
    for speaker in manifest["speakers"]:
        by_split.setdefault(speaker["split"], set()).add(speaker["speaker_id"])
    assert set(train.client_ids) == by_split["public"] and len(by_split["public"]) == 1
    assert set(test.client_ids) == by_split["test"]
    with pytest.raises(CorpusError, match="--num_public_speakers >= 1"):
        data.CorpusConfig(train_split="public", **SMALL)
