"""The on-disk per-speaker feature cache: reuse, invalidation, problems, atomicity."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from tasks.asr import feature_cache, librispeech, text
from tasks.asr.corpus import CorpusError, _load_audio
from tasks.asr.features import FeatureConfig, log_mel_features
from tasks.asr.librispeech import load_librispeech

CONFIG = FeatureConfig()

# Graph and eager execution of the front end differ by float rounding (up to
# ~2e-5 on these unit-variance features; the tf.data pipeline, which runs in
# graph mode, differs from eager just as much). So cached features are compared
# exactly with the front end traced the same way, and loosely with eager mode.
EAGER_ATOL = 1e-4


def _traced_front_end(config: FeatureConfig):
    return tf.function(lambda audio: log_mel_features(audio, config),
                       input_signature=[tf.TensorSpec([None], tf.float32)])


@pytest.fixture(scope="module")
def train_dir(tiny_corpus_dir) -> str:
    return os.path.join(tiny_corpus_dir, "train")


@pytest.fixture(scope="module")
def corpus(train_dir):
    return load_librispeech(train_dir, verify_audio=False)


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    """A cache built once for the read-only tests: (cache root, CachedSplit)."""
    root = str(tmp_path_factory.mktemp("feature_cache"))
    return root, feature_cache.build_feature_cache(root, corpus, CONFIG)


@pytest.fixture
def corpus_copy(train_dir, tmp_path) -> str:
    copy = str(tmp_path / "train")
    shutil.copytree(train_dir, copy)
    return copy


def _first_flac(root: str, speaker_index: int = 0, utterance_index: int = 2) -> str:
    speaker = sorted(os.listdir(root))[speaker_index]
    (chapter,) = os.listdir(os.path.join(root, speaker))
    return os.path.join(root, speaker, chapter, f"{speaker}-{chapter}-{utterance_index:04d}.flac")


def _truncate(path: str) -> None:
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])  # the header (STREAMINFO) survives


def _read_shard(split, speaker_id, num_mel_bins=CONFIG.num_mel_bins):
    dataset = feature_cache.shard_dataset(split.shard_path(speaker_id), num_mel_bins)
    return list(dataset.as_numpy_iterator())


def _files(folder: str) -> list[str]:
    return sorted(os.listdir(folder))


def test_build_then_reuse_decodes_nothing(corpus, tmp_path):
    root = str(tmp_path / "cache")
    first = feature_cache.build_feature_cache(root, corpus, CONFIG, num_threads=2)
    assert first.root == root
    assert first.stats.files_decoded == corpus.num_utterances == 24
    assert first.stats.speakers_built == len(corpus.client_ids) == 4
    assert first.stats.speakers_reused == 0
    assert first.problems == ()
    assert list(first.shards) == corpus.client_ids
    key = feature_cache.frontend_key(CONFIG)
    for speaker_id, relative in first.shards.items():
        assert not os.path.isabs(relative)
        assert os.path.dirname(relative) == key
        assert os.path.basename(relative).startswith(f"{speaker_id}-")
        assert first.kept[speaker_id] == tuple(
            u.utterance_id for u in corpus.utterances(speaker_id))
        assert first.num_examples[speaker_id] == 6
        with open(os.path.join(root, relative[: -len(".tfrecord")] + ".json")) as f:
            meta = json.load(f)
        assert meta == {"num_examples": 6, "kept": list(first.kept[speaker_id]),
                        "problems": [], "format": feature_cache.FORMAT_VERSION}
    # Exactly a tfrecord and a sidecar per speaker; no temporary files left behind.
    assert len(_files(os.path.join(root, key))) == 8
    assert not [n for n in _files(os.path.join(root, key)) if n.startswith(".")]

    second = feature_cache.build_feature_cache(root, corpus, CONFIG)
    assert second.stats.files_decoded == 0
    assert second.stats.speakers_built == 0
    assert second.stats.speakers_reused == 4
    assert (second.shards, second.kept, second.num_examples) == (
        first.shards, first.kept, first.num_examples)


def test_features_and_labels_match_the_front_end(corpus, built):
    _, split = built
    traced = _traced_front_end(CONFIG)
    for speaker_id in corpus.client_ids[:2]:
        elements = _read_shard(split, speaker_id)
        utterances = {u.utterance_id: u for u in corpus.utterances(speaker_id)}
        assert len(elements) == split.num_examples[speaker_id]
        for (features, labels), utterance_id in zip(elements, split.kept[speaker_id]):
            u = utterances[utterance_id]
            audio = _load_audio(tf.constant(u.audio_path))  # the tensorflow-io decode path
            expected = traced(audio).numpy()
            assert features.dtype == np.float32 and labels.dtype == np.int32
            assert features.shape == expected.shape == (expected.shape[0], 80)
            assert expected.shape[0] > 0
            np.testing.assert_array_equal(features, expected)
            eager = log_mel_features(audio, CONFIG).numpy()
            np.testing.assert_allclose(features, eager, rtol=0, atol=EAGER_ATOL)
            np.testing.assert_array_equal(labels, text.encode(u.transcript))


def test_shard_dataset_spec_and_core_ops_only(built):
    _, split = built
    path = split.shard_path(next(iter(split.shards)))
    dataset = feature_cache.shard_dataset(tf.constant(path), 80)
    assert dataset.element_spec == (tf.TensorSpec([None, 80], tf.float32),
                                    tf.TensorSpec([None], tf.int32))
    graph = tf.function(lambda s: feature_cache.parse_example(s, 80)).get_concrete_function(
        tf.TensorSpec([], tf.string)).graph
    op_types = {op.type for op in graph.get_operations()}
    assert "ParseExampleV2" in op_types and "DecodeRaw" in op_types
    assert not [t for t in op_types if t.startswith("IO>")]  # no tensorflow-io kernels


def test_front_end_change_rebuilds_everything_in_a_new_folder(corpus, tmp_path):
    root = str(tmp_path / "cache")
    base = feature_cache.build_feature_cache(root, corpus, CONFIG)
    config = dataclasses.replace(CONFIG, num_mel_bins=40)
    assert feature_cache.frontend_key(config) != feature_cache.frontend_key(CONFIG)
    split = feature_cache.build_feature_cache(root, corpus, config)
    assert split.stats.files_decoded == corpus.num_utterances
    assert split.stats.speakers_built == 4 and split.stats.speakers_reused == 0
    assert {os.path.dirname(p) for p in split.shards.values()} == {
        feature_cache.frontend_key(config)}
    for features, _ in _read_shard(split, corpus.client_ids[0], num_mel_bins=40):
        assert features.shape[1] == 40
    # The old front end's shards are left alone and still reused.
    again = feature_cache.build_feature_cache(root, corpus, CONFIG)
    assert again.stats.files_decoded == 0 and again.shards == base.shards


def test_every_front_end_field_is_in_the_key():
    keys = {feature_cache.frontend_key(CONFIG)}
    for field in dataclasses.fields(FeatureConfig):
        value = getattr(CONFIG, field.name)
        keys.add(feature_cache.frontend_key(dataclasses.replace(CONFIG, **{field.name: value * 2})))
    assert len(keys) == len(dataclasses.fields(FeatureConfig)) + 1
    assert all(len(k) < 64 and int(k, 16) >= 0 for k in keys)


def test_speaker_key_tracks_files_and_transcripts(corpus_copy):
    corpus = load_librispeech(corpus_copy, verify_audio=False)
    utterances = corpus.utterances(corpus.client_ids[0])
    key = feature_cache.speaker_key(utterances, CONFIG)
    assert len(key) == 64 and key == feature_cache.speaker_key(utterances, CONFIG)
    path = utterances[0].audio_path
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touch
    touched = feature_cache.speaker_key(utterances, CONFIG)
    assert touched != key
    changed_text = [dataclasses.replace(utterances[0], transcript="OTHER WORDS")] + utterances[1:]
    assert feature_cache.speaker_key(changed_text, CONFIG) != touched
    assert feature_cache.speaker_key(utterances[1:], CONFIG) != touched
    other = dataclasses.replace(CONFIG, frame_step_ms=20)
    assert feature_cache.speaker_key(utterances, other) != touched


def test_changed_audio_or_transcript_rebuilds_only_that_speaker(corpus_copy, tmp_path):
    root = str(tmp_path / "cache")
    before = feature_cache.build_feature_cache(
        root, load_librispeech(corpus_copy, verify_audio=False), CONFIG)

    path = _first_flac(corpus_copy, speaker_index=1)
    samples, rate = sf.read(path, dtype="int16")
    new_samples = (samples[: len(samples) // 2] // 2).astype(np.int16)
    sf.write(path, new_samples, rate, subtype="PCM_16", format="FLAC")
    corpus = load_librispeech(corpus_copy, verify_audio=False)
    speaker = corpus.client_ids[1]
    after = feature_cache.build_feature_cache(root, corpus, CONFIG)
    assert after.stats.speakers_built == 1 and after.stats.speakers_reused == 3
    assert after.stats.files_decoded == 6
    assert {s for s in after.shards if after.shards[s] != before.shards[s]} == {speaker}
    assert os.path.exists(os.path.join(root, before.shards[speaker]))  # old shard left alone
    utterance_id = os.path.basename(path)[: -len(".flac")]
    index = after.kept[speaker].index(utterance_id)
    features, _ = _read_shard(after, speaker)[index]
    expected = _traced_front_end(CONFIG)(new_samples.astype(np.float32) / 32768.0).numpy()
    np.testing.assert_array_equal(features, expected)

    # A transcript edit (audio untouched) also rebuilds just its speaker.
    speaker3 = corpus.client_ids[3]
    (chapter,) = os.listdir(os.path.join(corpus_copy, speaker3))
    trans = os.path.join(corpus_copy, speaker3, chapter, f"{speaker3}-{chapter}.trans.txt")
    lines = open(trans, encoding="utf-8").read().splitlines()
    lines[0] = lines[0].split(" ")[0] + " HELLO THERE"
    open(trans, "w", encoding="utf-8").write("\n".join(lines) + "\n")
    corpus = load_librispeech(corpus_copy, verify_audio=False)
    edited = feature_cache.build_feature_cache(root, corpus, CONFIG)
    assert edited.stats.speakers_built == 1 and edited.stats.files_decoded == 6
    assert {s for s in edited.shards if edited.shards[s] != after.shards[s]} == {speaker3}
    _, labels = _read_shard(edited, speaker3)[0]
    np.testing.assert_array_equal(labels, text.encode("HELLO THERE"))


def test_verify_audio_false_checks_headers_only(corpus_copy):
    path = _first_flac(corpus_copy)
    frames = sf.info(path).frames
    _truncate(path)
    strict_corpus = load_librispeech(corpus_copy)
    assert dict(strict_corpus.skipped) == {librispeech.TRUNCATED_AUDIO: 1}
    assert strict_corpus.num_utterances == 23
    lazy = load_librispeech(corpus_copy, verify_audio=False)
    assert not lazy.skipped and lazy.num_utterances == 24
    (u,) = [u for u in lazy.all_utterances() if u.audio_path == path]
    assert u.num_samples == frames == sf.info(path).frames
    # Header problems are still caught without decoding.
    with pytest.raises(CorpusError, match="wrong sample rate"):
        load_librispeech(corpus_copy, verify_audio=False, sample_rate=8000, strict=True)


def test_truncated_flac_is_a_problem_and_remembered(corpus_copy, tmp_path):
    path = _first_flac(corpus_copy)
    _truncate(path)
    corpus = load_librispeech(corpus_copy, verify_audio=False)
    speaker = corpus.client_ids[0]
    utterance_id = os.path.basename(path)[: -len(".flac")]
    root = str(tmp_path / "cache")

    split = feature_cache.build_feature_cache(root, corpus, CONFIG)
    assert split.stats.files_decoded == 24  # the truncated file was decoded too, once
    (problem,) = split.problems
    assert problem.path == path and problem.reason == librispeech.TRUNCATED_AUDIO == "truncated audio"
    assert problem.message().startswith(f"{path}: truncated audio")
    assert utterance_id not in split.kept[speaker]
    assert split.num_examples[speaker] == 5 == len(_read_shard(split, speaker))
    assert sum(split.num_examples.values()) == 23

    rerun = feature_cache.build_feature_cache(root, corpus, CONFIG)
    assert rerun.stats.files_decoded == 0 and rerun.stats.speakers_built == 0
    assert rerun.problems == split.problems
    assert rerun.kept == split.kept and rerun.num_examples == split.num_examples

    # strict: raises naming the file, from the cache (no decoding) or from a fresh build ...
    with pytest.raises(CorpusError) as error:
        feature_cache.build_feature_cache(root, corpus, CONFIG, strict=True)
    assert str(error.value) == problem.message() and "\n" not in str(error.value)
    fresh = str(tmp_path / "fresh")
    with pytest.raises(CorpusError, match="truncated audio"):
        feature_cache.build_feature_cache(fresh, corpus, CONFIG, strict=True)
    # ... and the complete shards it wrote stay usable.
    reused = feature_cache.build_feature_cache(fresh, corpus, CONFIG)
    assert reused.stats.files_decoded == 0 and reused.stats.speakers_reused == 4


def test_interrupted_build_is_not_reused(corpus, tmp_path, monkeypatch):
    root = str(tmp_path / "cache")
    folder = os.path.join(root, feature_cache.frontend_key(CONFIG))
    # Crash while writing the second speaker (one thread: the order is fixed).
    real_example = feature_cache._example
    calls = []

    def crashing_example(utterance, features):
        calls.append(utterance.utterance_id)
        if len(calls) == 9:
            raise KeyboardInterrupt("simulated crash")
        return real_example(utterance, features)

    monkeypatch.setattr(feature_cache, "_example", crashing_example)
    with pytest.raises(KeyboardInterrupt):
        feature_cache.build_feature_cache(root, corpus, CONFIG, num_threads=1)
    monkeypatch.setattr(feature_cache, "_example", real_example)
    # The crashed speaker has no sidecar (the first one finished; the worker may
    # have finished a later speaker before the pending tasks were cancelled).
    crashed = corpus.client_ids[1]
    key16 = feature_cache.speaker_key(corpus.utterances(crashed), CONFIG)[:16]
    sidecars = [n for n in _files(folder) if n.endswith(".json")]
    assert f"{corpus.client_ids[0]}-" in sidecars[0]
    assert f"{crashed}-{key16}.json" not in sidecars and 1 <= len(sidecars) <= 2
    assert not [n for n in _files(folder) if n.startswith(".")]  # temp files removed

    split = feature_cache.build_feature_cache(root, corpus, CONFIG)
    assert split.stats.speakers_reused == len(sidecars)
    assert split.stats.speakers_built == 4 - len(sidecars)
    assert split.stats.files_decoded == 6 * (4 - len(sidecars))

    # A tfrecord without its sidecar (killed between the two renames) and a stray
    # temp file (killed mid-write) are rebuilt, not reused.
    speaker = corpus.client_ids[2]
    record = os.path.join(root, split.shards[speaker])
    os.remove(record[: -len(".tfrecord")] + ".json")
    stray = os.path.join(folder, f".{os.path.basename(record)[:-9]}.json.tmp-x")
    open(stray, "w").write("{}")
    rebuilt = feature_cache.build_feature_cache(root, corpus, CONFIG)
    assert rebuilt.stats.speakers_built == 1 and rebuilt.stats.files_decoded == 6
    assert rebuilt.shards == split.shards
    assert len(_read_shard(rebuilt, speaker)) == 6


def test_unwritable_cache_root_is_one_line(corpus, tmp_path, built):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache_root = str(blocker / "cache")
    with pytest.raises(CorpusError) as error:
        feature_cache.build_feature_cache(cache_root, corpus, CONFIG)
    message = str(error.value)
    assert message.startswith(f"--feature_cache_dir={cache_root} is not writable: ")
    assert "\n" not in message
    if os.geteuid() != 0:  # root ignores permissions
        root, split = built
        os.chmod(root, 0o555)
        try:
            with pytest.raises(CorpusError, match="is not writable"):
                feature_cache.build_feature_cache(root, corpus, dataclasses.replace(
                    CONFIG, top_db=60.0))
            # A complete cache needs no write at all.
            again = feature_cache.build_feature_cache(root, corpus, CONFIG)
            assert again.stats.files_decoded == 0 and again.shards == split.shards
        finally:
            os.chmod(root, 0o755)


def test_a_task_without_a_cache_folder_removes_its_temporary_one(tiny_corpus_dir):
    import gc  # pylint: disable=import-outside-toplevel

    from tasks.asr import task as task_lib  # pylint: disable=import-outside-toplevel
    corpus = load_librispeech(os.path.join(tiny_corpus_dir, "test"))
    task = task_lib.AsrTask(corpus, corpus, task_lib.AsrTaskConfig(model_size="micro"))
    folder = task.feature_cache_dir
    assert os.path.isdir(folder) and os.listdir(folder)  # the shards live there
    del task
    gc.collect()
    assert not os.path.exists(folder)
