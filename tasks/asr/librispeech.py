"""Loader for corpora in LibriSpeech layout (real LibriSpeech or the synthetic corpus).

Layout: ``root/SPEAKER/CHAPTER/SPEAKER-CHAPTER-NNNN.flac`` plus
``root/SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt`` with lines
``SPEAKER-CHAPTER-NNNN TRANSCRIPT WORDS``. Speakers become clients.

Every file is checked at index time -- audio is fully decoded with soundfile
-- so that a bad file surfaces here as one readable line instead of as a
TensorFlow stack trace in the middle of federated training.

``verify_audio=False`` checks only each FLAC's header (empty, unreadable, not
FLAC, sample rate, channels, bit depth) and takes the sample count from it
without decoding. That is for callers that decode every file exactly once
themselves and catch truncation there (``tasks.asr.feature_cache``): a
truncated file then passes the loader.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os

import numpy as np
import soundfile as sf
from absl import logging

from tasks.asr.corpus import CorpusError, SpeechCorpus, Utterance

# Skip reasons (keys of SpeechCorpus.skipped).
EMPTY_AUDIO = "empty audio file"
UNREADABLE_AUDIO = "unreadable audio"
NOT_FLAC = "not FLAC audio"
TRUNCATED_AUDIO = "truncated audio"
WRONG_SAMPLE_RATE = "wrong sample rate"
NOT_MONO = "not mono"
NOT_16_BIT = "not 16-bit audio"
TRANSCRIPT_NOT_UTF8 = "transcript not utf-8"
UNREADABLE_TRANSCRIPT = "unreadable transcript"
UNREADABLE_DIRECTORY = "unreadable directory"
EMPTY_TRANSCRIPT = "empty transcript"
MISSING_TRANSCRIPT = "missing transcript"
MISSING_AUDIO = "missing audio"
MALFORMED_LINE = "malformed transcript line"
DUPLICATE_LINE = "duplicate transcript line"

_DECODE_BLOCK = 1 << 16  # frames per read while verifying audio


@dataclasses.dataclass(frozen=True)
class _Problem:
    """One bad file; ``count`` is how many utterances it costs."""

    path: str
    reason: str
    detail: str = ""
    count: int = 1

    def message(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.path}: {self.reason}{detail}"


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """An utterance whose text side is fine; its audio is still to be checked."""

    utterance_id: str
    speaker_id: str
    audio_path: str
    transcript: str


def _one_line(error: BaseException, path: str) -> str:
    """The error on one line, without the path that our message already starts with."""
    text = str(error).replace(f"Error opening {path!r}: ", "")
    return " ".join(text.split()) or type(error).__name__


def _read_transcripts(trans_path: str, prefix: str) -> tuple[dict[str, str], list[_Problem]]:
    """Parse a trans.txt into ({utterance id: transcript}, per-line problems).

    Raises ``UnicodeDecodeError`` if the file is not UTF-8.
    """
    with open(trans_path, "rb") as f:
        text = f.read().decode("utf-8")
    transcripts: dict[str, str] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue  # blank lines are harmless
        utterance_id = parts[0]
        suffix = utterance_id[len(prefix) :]
        if not utterance_id.startswith(prefix) or not suffix.isdigit():
            detail = f"line {number}: {line.strip()[:60]!r}"
            problems.append(_Problem(trans_path, MALFORMED_LINE, detail))
        elif utterance_id in transcripts:
            problems.append(_Problem(trans_path, DUPLICATE_LINE, f"line {number}: {utterance_id}"))
        else:
            # Normalize the way LibriSpeech stores text: single spaces, upper case.
            transcripts[utterance_id] = " ".join(parts[1:]).upper().strip()
    return transcripts, problems


def _index_chapter(
    chapter_dir: str, speaker: str, chapter: str
) -> tuple[list[_Candidate], list[_Problem]]:
    """Pair one chapter's audio files with its transcript lines."""
    try:
        names = os.listdir(chapter_dir)
    except OSError as e:
        return [], [_Problem(chapter_dir, UNREADABLE_DIRECTORY, e.strerror or str(e))]
    audio = {n[: -len(".flac")]: os.path.join(chapter_dir, n) for n in names if n.endswith(".flac")}
    trans_path = os.path.join(chapter_dir, f"{speaker}-{chapter}.trans.txt")
    if not audio and not os.path.exists(trans_path):
        return [], []  # not a chapter directory
    transcripts: dict[str, str] = {}
    problems: list[_Problem] = []
    if os.path.exists(trans_path):
        try:
            transcripts, problems = _read_transcripts(trans_path, f"{speaker}-{chapter}-")
        except UnicodeDecodeError as e:
            # One undecodable file loses every utterance of the chapter.
            detail = f"invalid byte at offset {e.start}"
            count = max(1, len(audio))
            return [], [_Problem(trans_path, TRANSCRIPT_NOT_UTF8, detail, count=count)]
        except OSError as e:
            # E.g. no read permission, or a directory where the file belongs.
            count = max(1, len(audio))
            detail = e.strerror or str(e)
            return [], [_Problem(trans_path, UNREADABLE_TRANSCRIPT, detail, count=count)]
    candidates = []
    for utterance_id in sorted(audio.keys() | transcripts.keys()):
        if utterance_id not in audio:
            missing = os.path.join(chapter_dir, utterance_id + ".flac")
            detail = f"listed in {os.path.basename(trans_path)}"
            problems.append(_Problem(missing, MISSING_AUDIO, detail))
        elif utterance_id not in transcripts:
            problems.append(_Problem(audio[utterance_id], MISSING_TRANSCRIPT))
        elif not transcripts[utterance_id]:
            detail = f"{utterance_id} has no words"
            problems.append(_Problem(trans_path, EMPTY_TRANSCRIPT, detail))
        else:
            candidates.append(
                _Candidate(utterance_id, speaker, audio[utterance_id], transcripts[utterance_id])
            )
    return candidates, problems


def _subdirs(path: str) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _index(root: str) -> tuple[list[_Candidate], list[_Problem]]:
    """Walk root/SPEAKER/CHAPTER/ and index every chapter."""
    candidates: list[_Candidate] = []
    problems: list[_Problem] = []
    for speaker in _subdirs(root):
        try:
            chapters = _subdirs(os.path.join(root, speaker))
        except OSError as e:
            problems.append(_Problem(os.path.join(root, speaker), UNREADABLE_DIRECTORY,
                                     e.strerror or str(e)))
            continue
        for chapter in chapters:
            found, bad = _index_chapter(os.path.join(root, speaker, chapter), speaker, chapter)
            candidates.extend(found)
            problems.extend(bad)
    return candidates, problems


def _check_audio(
    path: str, sample_rate: int, verify_audio: bool = True
) -> tuple[int | None, _Problem | None]:
    """Check one FLAC: (samples, None) or (None, problem).

    With ``verify_audio`` the file is decoded completely (catching truncation);
    without, only its header is checked and the header's frame count returned.
    """
    try:
        if os.path.getsize(path) == 0:
            return None, _Problem(path, EMPTY_AUDIO)
        info = sf.info(path)
    except (OSError, RuntimeError) as e:  # soundfile raises LibsndfileError, a RuntimeError
        return None, _Problem(path, UNREADABLE_AUDIO, _one_line(e, path))
    if info.format != "FLAC":
        return None, _Problem(path, NOT_FLAC, info.format)
    if info.samplerate != sample_rate:
        detail = f"{info.samplerate} Hz, expected {sample_rate} Hz"
        return None, _Problem(path, WRONG_SAMPLE_RATE, detail)
    if info.channels != 1:
        return None, _Problem(path, NOT_MONO, f"{info.channels} channels")
    if info.subtype != "PCM_16":
        return None, _Problem(path, NOT_16_BIT, info.subtype)
    if not verify_audio:
        return info.frames, None
    # A cut FLAC keeps a valid header: it either fails mid-decode or yields
    # fewer samples than the header promises. Both mean truncated.
    decoded = 0
    buffer = np.empty((_DECODE_BLOCK, 1), dtype=np.int16)
    try:
        with sf.SoundFile(path) as f:
            while True:
                n = len(f.read(_DECODE_BLOCK, dtype="int16", always_2d=True, out=buffer))
                decoded += n
                if n < _DECODE_BLOCK:
                    break
    except (OSError, RuntimeError) as e:
        return None, _Problem(path, TRUNCATED_AUDIO, _one_line(e, path))
    if decoded != info.frames:
        detail = f"header says {info.frames} samples, decoded {decoded}"
        return None, _Problem(path, TRUNCATED_AUDIO, detail)
    return decoded, None


def _first(problems: list[_Problem]) -> _Problem:
    """The problem with the smallest path: a deterministic "first bad file"."""
    return min(problems, key=lambda p: (p.path, p.detail))


def _summary(skipped: collections.Counter, total: int, root: str) -> str:
    by_count = sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0]))
    reasons = ", ".join(f"{n} {reason}" for reason, n in by_count)
    return f"skipped {sum(skipped.values())} of {total} utterances in {root}: {reasons}"


def load_librispeech(
    root: str, *, strict: bool = False, sample_rate: int = 16000, verify_audio: bool = True
) -> SpeechCorpus:
    """Index a LibriSpeech-layout directory; speakers are the clients.

    Bad files (corrupt or truncated audio, wrong sample rate, non-mono,
    undecodable or empty transcripts, audio without transcript and vice versa)
    are skipped, counted by reason in ``corpus.skipped`` and summarized in one
    warning. With ``strict=True`` the first bad file (smallest path; transcript
    problems are reported before the audio is decoded) raises
    :class:`CorpusError` instead. A missing or empty ``root``, or one with no
    usable utterance, always raises :class:`CorpusError`.

    ``verify_audio=False`` skips the full decode: only headers are checked and
    ``num_samples`` comes from the header, so a truncated file is *not* caught
    here. Use it only when every file is decoded and verified later anyway
    (e.g. by :func:`tasks.asr.feature_cache.build_feature_cache`).
    """
    if not os.path.isdir(root):
        raise CorpusError(f"corpus directory {root} does not exist")
    candidates, problems = _index(root)
    total = len(candidates) + sum(p.count for p in problems)
    if total == 0:
        raise CorpusError(
            f"corpus directory {root} contains no LibriSpeech-layout utterances (expected"
            " SPEAKER/CHAPTER/SPEAKER-CHAPTER-NNNN.flac and SPEAKER-CHAPTER.trans.txt)"
        )
    if strict and problems:
        # Fail before the (slow) audio pass when the text side is already wrong.
        raise CorpusError(_first(problems).message())
    # soundfile (cffi) releases the GIL while decoding, so threads overlap decode and I/O.
    workers = min(32, 2 * (os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        checks = list(pool.map(
            lambda c: _check_audio(c.audio_path, sample_rate, verify_audio), candidates))
    by_speaker: dict[str, list[Utterance]] = collections.defaultdict(list)
    for candidate, (num_samples, problem) in zip(candidates, checks):
        if problem is not None:
            problems.append(problem)
            continue
        by_speaker[candidate.speaker_id].append(
            Utterance(
                utterance_id=candidate.utterance_id,
                speaker_id=candidate.speaker_id,
                audio_path=candidate.audio_path,
                transcript=candidate.transcript,
                num_samples=num_samples,
                sample_rate=sample_rate,
            )
        )
    if strict and problems:
        raise CorpusError(_first(problems).message())
    skipped: collections.Counter = collections.Counter()
    for problem in problems:
        skipped[problem.reason] += problem.count
    if skipped:
        logging.warning("%s", _summary(skipped, total, root))
    corpus = SpeechCorpus(by_speaker, skipped)
    if not corpus.client_ids:
        summary = _summary(skipped, total, root)
        raise CorpusError(f"corpus directory {root} has no usable utterances ({summary})")
    return corpus
