"""On-disk, per-speaker cache of log-mel features: computed once per corpus, reused after.

Layout::

    {cache_root}/{frontend_key}/{speaker_id}-{speaker_key[:16]}.tfrecord
    {cache_root}/{frontend_key}/{speaker_id}-{speaker_key[:16]}.json

``frontend_key`` hashes :data:`FORMAT_VERSION` and every :class:`FeatureConfig`
field, so a changed front end writes into a new folder. ``speaker_key`` hashes
the front-end key and, for each of the speaker's utterances, its id, absolute
audio path, file size, ``st_mtime_ns`` and transcript: a changed or
added/removed file or transcript changes only that speaker's key, so only that
speaker is rebuilt. Old shards are never deleted.

Each ``.tfrecord`` holds one ``tf.train.Example`` per kept utterance, in the
corpus's order: ``features`` (bytes: little-endian float32 ``[T, F]``,
row-major), ``num_frames`` (int64), ``labels`` (int64 list,
:func:`tasks.asr.text.encode` of the transcript) and ``utterance_id`` (bytes).
The ``.json`` sidecar records ``num_examples``, the ``kept`` utterance ids, the
``problems`` (``[path, reason, detail]``) and the ``format``.

Writes are atomic: the tfrecord and the sidecar are written under temporary
names in the same folder, then the tfrecord is renamed into place and the
sidecar last. A shard is complete only when its sidecar exists, so an
interrupted build (a tfrecord without sidecar, a leftover ``.*.tmp-*`` file) is
never reused; leftover temporary files are ignored, not deleted.

Decode-once rule: the corpus should be indexed with
``load_librispeech(..., verify_audio=False)`` (headers only). Each audio file
is then decoded exactly once, here, with soundfile; a decode error or fewer
samples than the header promises is a ``truncated audio`` problem. The
utterance is left out of its shard and the problem stored in the sidecar, so a
rerun reports the same problems without decoding anything. Samples are scaled
exactly like :func:`tasks.asr.corpus._load_audio` (int16 / 32768).

Reading (:func:`parse_example`, :func:`shard_dataset`) uses core TensorFlow
ops only: it runs inside TFF's C++ worker, which has no tensorflow-io ops.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from tasks.asr import librispeech
from tasks.asr import text
from tasks.asr.corpus import CorpusError, SpeechCorpus, Utterance

if TYPE_CHECKING:
    from tasks.asr.features import FeatureConfig

FORMAT_VERSION = 1

_KEY_CHARS = 16  # speaker-key characters in a shard's file name
_FLAG = "--feature_cache_dir"


@dataclasses.dataclass(frozen=True)
class CacheProblem:
    """One utterance left out of its shard while featurizing."""

    path: str
    reason: str
    detail: str = ""

    def message(self) -> str:
        """``PATH: REASON (DETAIL)`` on one line, like the loader's messages."""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.path}: {self.reason}{detail}"


@dataclasses.dataclass(frozen=True)
class BuildStats:
    """What one :func:`build_feature_cache` call did."""

    speakers_reused: int  # shards found complete on disk
    speakers_built: int
    files_decoded: int  # audio files decoded by this call (0 on a full reuse)
    seconds: float


@dataclasses.dataclass(frozen=True)
class CachedSplit:
    """A corpus split's cached shards.

    Speakers whose every utterance is a problem have an (empty) shard on disk
    but are left out of ``shards``/``num_examples``/``kept``, as
    :class:`SpeechCorpus` drops speakers without utterances.
    """

    root: str  # absolute cache root
    shards: dict[str, str]  # speaker id -> shard path relative to root
    num_examples: dict[str, int]  # speaker id -> examples in its shard (problems excluded)
    kept: dict[str, tuple[str, ...]]  # speaker id -> utterance ids in the shard, in order
    problems: tuple[CacheProblem, ...]
    stats: BuildStats

    def shard_path(self, speaker_id: str) -> str:
        """Absolute path of one speaker's shard."""
        return os.path.join(self.root, self.shards[speaker_id])


# ----------------------------------------------------------------------------- keys


def frontend_key(feature_config: "FeatureConfig") -> str:
    """Short hex hash of :data:`FORMAT_VERSION` and every front-end setting."""
    payload = json.dumps(
        {"format": FORMAT_VERSION, "config": dataclasses.asdict(feature_config)}, sort_keys=True
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def speaker_key(utterances: Sequence[Utterance], feature_config: "FeatureConfig") -> str:
    """Hex sha256 of the front-end key and each utterance's id, path, size, mtime, transcript.

    A file that cannot be stat'ed hashes as size and mtime -1 (its build then
    records it as a problem; once it is back, its key changes).
    """
    digest = hashlib.sha256(frontend_key(feature_config).encode("utf-8"))
    for u in utterances:
        path = os.path.abspath(u.audio_path)
        try:
            st = os.stat(path)
            size, mtime_ns = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime_ns = -1, -1
        record = [u.utterance_id, path, size, mtime_ns, u.transcript]
        digest.update(json.dumps(record).encode("utf-8") + b"\n")
    return digest.hexdigest()


# ----------------------------------------------------------------------------- reading


def parse_example(serialized: tf.Tensor, num_mel_bins: int) -> tuple[tf.Tensor, tf.Tensor]:
    """One serialized example -> (features float32 ``[T, num_mel_bins]``, labels int32 ``[L]``).

    Core TF ops only (it runs inside TFF's C++ worker).
    """
    parsed = tf.io.parse_single_example(
        serialized,
        {
            "features": tf.io.FixedLenFeature([], tf.string),
            "num_frames": tf.io.FixedLenFeature([], tf.int64),
            "labels": tf.io.VarLenFeature(tf.int64),
        },
    )
    flat = tf.io.decode_raw(parsed["features"], tf.float32, little_endian=True)
    num_frames = tf.cast(parsed["num_frames"], tf.int32)
    features = tf.reshape(flat, tf.stack([num_frames, num_mel_bins]))
    features = tf.ensure_shape(features, [None, num_mel_bins])
    labels = tf.cast(tf.sparse.to_dense(parsed["labels"]), tf.int32)
    return features, labels


def shard_dataset(path: "tf.Tensor | str", num_mel_bins: int) -> tf.data.Dataset:
    """One shard as a dataset of (features ``[T, num_mel_bins]``, labels ``[L]``); core ops only."""
    return tf.data.TFRecordDataset(path).map(lambda s: parse_example(s, num_mel_bins))


# ----------------------------------------------------------------------------- building


@dataclasses.dataclass(frozen=True)
class _Shard:
    """Where one speaker's shard lives (absolute paths) and its path relative to the root."""

    speaker_id: str
    record: str
    sidecar: str
    relative: str


@dataclasses.dataclass(frozen=True)
class _Result:
    speaker_id: str
    kept: tuple[str, ...]
    problems: tuple[CacheProblem, ...]
    files_decoded: int


def _read_sidecar(shard: _Shard) -> Optional[_Result]:
    """The finished shard's contents, or None if it is missing, incomplete or unreadable."""
    if not os.path.isfile(shard.record):
        return None
    try:
        with open(shard.sidecar, encoding="utf-8") as f:
            meta = json.load(f)
        if meta["format"] != FORMAT_VERSION:
            return None
        kept = tuple(str(u) for u in meta["kept"])
        if len(kept) != meta["num_examples"]:
            return None
        problems = tuple(CacheProblem(*map(str, p)) for p in meta["problems"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _Result(shard.speaker_id, kept, problems, files_decoded=0)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _decode(path: str, sample_rate: int) -> tuple[Optional[np.ndarray], Optional[CacheProblem]]:
    """Decode one FLAC completely: (float32 samples in [-1, 1), None) or (None, problem).

    Header problems (the file changed since indexing) are reported before decoding.
    """
    import soundfile as sf

    try:
        if os.path.getsize(path) == 0:
            return None, CacheProblem(path, librispeech.EMPTY_AUDIO)
        info = sf.info(path)
    except (OSError, RuntimeError) as e:  # soundfile raises LibsndfileError, a RuntimeError
        return None, CacheProblem(path, librispeech.UNREADABLE_AUDIO, _one_line(e))
    if info.samplerate != sample_rate:
        detail = f"{info.samplerate} Hz, expected {sample_rate} Hz"
        return None, CacheProblem(path, librispeech.WRONG_SAMPLE_RATE, detail)
    if info.channels != 1:
        return None, CacheProblem(path, librispeech.NOT_MONO, f"{info.channels} channels")
    try:
        pcm, _ = sf.read(path, dtype="int16", always_2d=True)
    except (OSError, RuntimeError) as e:
        return None, CacheProblem(path, librispeech.TRUNCATED_AUDIO, _one_line(e))
    if len(pcm) != info.frames:
        detail = f"header says {info.frames} samples, decoded {len(pcm)}"
        return None, CacheProblem(path, librispeech.TRUNCATED_AUDIO, detail)
    # Bit-identical to corpus._load_audio: float32(int16) / 32768 (a power of two: exact).
    return pcm[:, 0].astype(np.float32) / np.float32(32768.0), None


def _example(utterance: Utterance, features: np.ndarray) -> bytes:
    features = np.ascontiguousarray(features, dtype="<f4")
    feature = {
        "features": tf.train.Feature(bytes_list=tf.train.BytesList(value=[features.tobytes()])),
        "num_frames": tf.train.Feature(int64_list=tf.train.Int64List(value=[features.shape[0]])),
        "labels": tf.train.Feature(
            int64_list=tf.train.Int64List(value=text.encode(utterance.transcript))
        ),
        "utterance_id": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[utterance.utterance_id.encode("utf-8")])
        ),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _temp_name(folder: str, final: str) -> str:
    fd, path = tempfile.mkstemp(prefix=f".{os.path.basename(final)}.tmp-", dir=folder)
    os.close(fd)
    os.chmod(path, 0o644)  # mkstemp makes it owner-only
    return path


def _remove(path: Optional[str]) -> None:
    if path is not None:
        try:
            os.remove(path)
        except OSError:
            pass


def _build_shard(
    shard: _Shard,
    utterances: Sequence[Utterance],
    featurize: Callable[[np.ndarray], np.ndarray],
    sample_rate: int,
) -> _Result:
    """Decode, featurize and write one speaker, one utterance in memory at a time."""
    folder = os.path.dirname(shard.record)
    kept: list[str] = []
    problems: list[CacheProblem] = []
    decoded = 0
    temp_record = temp_sidecar = None
    try:
        temp_record = _temp_name(folder, shard.record)
        with tf.io.TFRecordWriter(temp_record) as writer:
            for u in utterances:
                audio, problem = _decode(u.audio_path, sample_rate)
                # Truncation is found by decoding; other problems stop at the header.
                if problem is None or problem.reason == librispeech.TRUNCATED_AUDIO:
                    decoded += 1
                if problem is not None:
                    problems.append(problem)
                    continue
                try:
                    features = featurize(audio)
                except tf.errors.OpError as e:  # a bug, not an unwritable cache: no OpError
                    raise RuntimeError(f"featurizing {u.audio_path} failed: {e.message}") from e
                writer.write(_example(u, features))
                kept.append(u.utterance_id)
        meta = {
            "num_examples": len(kept),
            "kept": kept,
            "problems": [[p.path, p.reason, p.detail] for p in problems],
            "format": FORMAT_VERSION,
        }
        temp_sidecar = _temp_name(folder, shard.sidecar)
        with open(temp_sidecar, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        # The sidecar goes last: it marks the shard complete.
        os.replace(temp_record, shard.record)
        temp_record = None
        os.replace(temp_sidecar, shard.sidecar)
        temp_sidecar = None
    finally:
        _remove(temp_record)
        _remove(temp_sidecar)
    return _Result(shard.speaker_id, tuple(kept), tuple(problems), decoded)


def _featurizer(feature_config: "FeatureConfig") -> Callable[[np.ndarray], np.ndarray]:
    """log_mel_features as one traced tf.function (safe to call from several threads)."""
    from tasks.asr import features as features_lib

    fn = tf.function(
        lambda audio: features_lib.log_mel_features(audio, feature_config),
        input_signature=[tf.TensorSpec([None], tf.float32)],
    )
    concrete = fn.get_concrete_function()  # trace now, not concurrently in the workers
    return lambda audio: concrete(tf.convert_to_tensor(audio, tf.float32)).numpy()


def _not_writable(cache_root: str, error: BaseException) -> CorpusError:
    reason = getattr(error, "strerror", None) or getattr(error, "message", None) or error
    return CorpusError(f"{_FLAG}={cache_root} is not writable: {_one_line(Exception(reason))}")


def build_feature_cache(
    cache_root: str,
    corpus: SpeechCorpus,
    feature_config: "FeatureConfig",
    *,
    strict: bool = False,
    num_threads: Optional[int] = None,
    description: str = "features",
) -> CachedSplit:
    """Featurize ``corpus`` into ``cache_root`` (reusing complete shards) and describe it.

    Missing shards are built in a thread pool, one speaker per task. Problem
    utterances (undecodable/truncated audio...) are left out and returned in
    ``problems``; with ``strict=True`` the first one (smallest path) raises
    :class:`CorpusError` after the build (complete shards stay written). An
    unwritable ``cache_root`` raises a one-line :class:`CorpusError`; a cache
    that needs no new shard is only read.
    """
    import tqdm

    start = time.perf_counter()
    root = os.path.abspath(cache_root)
    key = frontend_key(feature_config)
    folder = os.path.join(root, key)

    results: dict[str, _Result] = {}
    todo: list[tuple[_Shard, list[Utterance]]] = []
    shards: dict[str, _Shard] = {}
    for speaker_id in corpus.client_ids:
        utterances = corpus.utterances(speaker_id)
        name = f"{speaker_id}-{speaker_key(utterances, feature_config)[:_KEY_CHARS]}"
        shard = _Shard(
            speaker_id,
            record=os.path.join(folder, name + ".tfrecord"),
            sidecar=os.path.join(folder, name + ".json"),
            relative=os.path.join(key, name + ".tfrecord"),
        )
        shards[speaker_id] = shard
        found = _read_sidecar(shard)
        if found is not None:
            results[speaker_id] = found
        else:
            todo.append((shard, utterances))
    reused = len(results)

    if todo:
        try:
            os.makedirs(folder, exist_ok=True)
            _remove(_temp_name(folder, os.path.join(folder, "probe")))
        except OSError as e:  # e.g. read-only, or the path runs under a regular file
            raise _not_writable(cache_root, e) from None
        featurize = _featurizer(feature_config)
        workers = max(1, min(len(todo), num_threads or os.cpu_count() or 1))
        with tqdm.tqdm(total=len(todo), desc=description, unit="speaker", disable=None) as bar:
            pool = concurrent.futures.ThreadPoolExecutor(workers)
            try:
                futures = [
                    pool.submit(_build_shard, shard, utterances, featurize,
                                feature_config.sample_rate)
                    for shard, utterances in todo
                ]
                for future in concurrent.futures.as_completed(futures):
                    result = future.result()
                    results[result.speaker_id] = result
                    bar.update(1)
            except (OSError, tf.errors.OpError) as e:  # writing failed (disk full, read-only...)
                raise _not_writable(cache_root, e) from None
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

    seconds = time.perf_counter() - start
    stats = BuildStats(
        speakers_reused=reused,
        speakers_built=len(todo),
        files_decoded=sum(r.files_decoded for r in results.values()),
        seconds=seconds,
    )
    problems = tuple(sorted(
        (p for r in results.values() for p in r.problems), key=lambda p: (p.path, p.detail)
    ))
    logging.info(
        "%s: reused %d and built %d speaker shards, decoded %d audio files, %d problems,"
        " %.1f s (%s)",
        description, stats.speakers_reused, stats.speakers_built, stats.files_decoded,
        len(problems), seconds, folder,
    )
    if strict and problems:
        raise CorpusError(problems[0].message())
    speakers = [s for s in corpus.client_ids if results[s].kept]
    return CachedSplit(
        root=root,
        shards={s: shards[s].relative for s in speakers},
        num_examples={s: len(results[s].kept) for s in speakers},
        kept={s: results[s].kept for s in speakers},
        problems=problems,
        stats=stats,
    )


__all__ = [
    "FORMAT_VERSION",
    "BuildStats",
    "CacheProblem",
    "CachedSplit",
    "build_feature_cache",
    "frontend_key",
    "parse_example",
    "shard_dataset",
    "speaker_key",
]
