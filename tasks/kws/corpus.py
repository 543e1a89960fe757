"""Keyword-spotting clips grouped by speaker, and the Speech Commands layout loader.

Layout (Warden 2018, "Speech Commands"): ``ROOT/WORD/SPEAKER_nohash_N.wav``
(16 kHz mono 16-bit PCM, about 1 s), optionally ``ROOT/_background_noise_/*.wav``
(long noise recordings), ``ROOT/testing_list.txt`` and
``ROOT/validation_list.txt`` (one ``WORD/FILE.wav`` per line), and the
official test set's ``_silence_`` / ``_unknown_`` folders.

Classes: "silence" (``_silence_`` clips and 1-s pieces of the background
noise), "unknown" (every word that is not a command) and the ten commands.
Speakers are the clients (a file name's part before ``_nohash_``);
background-noise pieces have no speaker and are dealt round-robin to them.

Every WAV header is read at index time, so a bad file is one line (a
`KwsCorpusError` when `strict`, else skipped and counted), never a traceback
in the middle of training.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import wave
from collections.abc import Iterable, Mapping, Sequence
from typing import Optional

import numpy as np
from absl import logging

from tff_prune.task import base

COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE, UNKNOWN = "silence", "unknown"
CLASS_NAMES = (SILENCE, UNKNOWN) + COMMANDS
SAMPLE_RATE = 16000
CLIP_SAMPLES = SAMPLE_RATE  # every clip is cut or zero-padded to 1 s

BACKGROUND_DIR = "_background_noise_"
SILENCE_DIR = "_silence_"
UNKNOWN_DIR = "_unknown_"
TESTING_LIST = "testing_list.txt"
VALIDATION_LIST = "validation_list.txt"
NOHASH = "_nohash_"

# Skip reasons (keys of KwsCorpus.skipped).
UNREADABLE_WAV = "unreadable WAV file"
WRONG_FORMAT = "not 16 kHz mono 16-bit audio"
EMPTY_AUDIO = "empty audio file"
NO_SPEAKER = "no SPEAKER_nohash_ in the file name"
UNREADABLE_FOLDER = "unreadable folder"


class KwsCorpusError(base.DataError):
    """One-line, user-facing data error (missing folder, bad file when strict)."""


@dataclasses.dataclass(frozen=True)
class Clip:
    """One second of one WAV file, from sample `start`, and its class index."""

    path: str
    speaker_id: str
    label: int
    start: int = 0


def label_of_folder(folder: str) -> int:
    """Class index of the clips in ``ROOT/folder``: a command, silence or unknown."""
    if folder in COMMANDS:
        return CLASS_NAMES.index(folder)
    return CLASS_NAMES.index(SILENCE if folder == SILENCE_DIR else UNKNOWN)


class KwsCorpus:
    """Clips grouped by speaker; speakers are the federated clients."""

    def __init__(self, clips_by_speaker: Mapping[str, Sequence[Clip]],
                 skipped: Optional[collections.Counter] = None):
        """Speakers without clips are dropped; `skipped` counts rejected files by reason."""
        self._clips = {s: tuple(c) for s, c in sorted(clips_by_speaker.items()) if c}
        self.client_ids: list[str] = list(self._clips)
        self.skipped = collections.Counter(skipped or {})

    def __repr__(self) -> str:
        return f"KwsCorpus({len(self.client_ids)} speakers, {self.num_clips} clips)"

    def clips(self, speaker_id: str) -> list[Clip]:
        """The clips of one speaker; KeyError for an unknown id."""
        return list(self._clips[speaker_id])

    @property
    def num_clips(self) -> int:
        return sum(len(c) for c in self._clips.values())

    def class_counts(self) -> dict[str, int]:
        """Clips per class name, over all speakers."""
        counts = collections.Counter(c.label for clips in self._clips.values() for c in clips)
        return {name: counts[i] for i, name in enumerate(CLASS_NAMES)}


# ----------------------------------------------------------------------------- audio


class _BadWav(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _open_wav(path: str) -> wave.Wave_read:
    try:
        return wave.open(path, "rb")
    except (wave.Error, EOFError, OSError) as e:
        raise _BadWav(UNREADABLE_WAV, " ".join(str(e).split()) or type(e).__name__) from None


def wav_frames(path: str) -> int:
    """Samples of a 16 kHz mono 16-bit PCM WAV (its header); `_BadWav` otherwise."""
    with _open_wav(path) as w:
        params = (w.getframerate(), w.getnchannels(), w.getsampwidth())
        if params != (SAMPLE_RATE, 1, 2):
            raise _BadWav(WRONG_FORMAT, "%d Hz, %d channels, %d-byte samples" % params)
        if w.getnframes() == 0:
            raise _BadWav(EMPTY_AUDIO)
        return w.getnframes()


def read_clip(clip: Clip) -> np.ndarray:
    """float32 [CLIP_SAMPLES] in [-1, 1): the clip's second, zero-padded at the end."""
    try:
        with _open_wav(clip.path) as w:
            w.setpos(clip.start)
            data = w.readframes(CLIP_SAMPLES)
    except (_BadWav, wave.Error, EOFError, OSError) as e:
        raise KwsCorpusError(f"{clip.path}: cannot read audio ({e})") from None
    samples = np.frombuffer(data[:len(data) // 2 * 2], "<i2").astype(np.float32) / 32768.0
    return np.pad(samples, (0, CLIP_SAMPLES - samples.size))


def read_clips(clips: Iterable[Clip]) -> np.ndarray:
    """float32 [N, CLIP_SAMPLES] of `clips`, in order."""
    rows = [read_clip(c) for c in clips]
    return np.stack(rows) if rows else np.zeros([0, CLIP_SAMPLES], np.float32)


# ----------------------------------------------------------------------------- layout


def _read_list(root: str, name: str) -> Optional[set[str]]:
    path = os.path.join(root, name)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return {line.strip() for line in f if line.strip()}
    except (OSError, UnicodeDecodeError) as e:
        raise KwsCorpusError(f"{path}: cannot read the file list ({e})") from None


def _index(root: str, strict: bool
           ) -> tuple[list[Clip], list[tuple[str, int]], collections.Counter]:
    """(clips, background files with their lengths, skipped counts) of a folder."""
    clips, background, skipped = [], [], collections.Counter()

    def bad(path: str, reason: str, detail: str = "") -> None:
        message = f"{path}: {reason}" + (f" ({detail})" if detail else "")
        if strict:
            raise KwsCorpusError(message)
        if not skipped[reason]:  # the first of each kind, so the user can look at one
            logging.warning("skipping %s", message)
        skipped[reason] += 1

    try:
        folders = sorted(os.listdir(root))
    except OSError as e:
        raise KwsCorpusError(f"cannot read the corpus folder {root}: {e.strerror or e}") from None
    for folder in folders:
        folder_path = os.path.join(root, folder)
        if folder.startswith(".") or not os.path.isdir(folder_path):
            continue
        try:
            names = sorted(os.listdir(folder_path))
        except OSError as e:
            bad(folder_path, UNREADABLE_FOLDER, e.strerror or str(e))
            continue
        for name in names:
            path = os.path.join(folder_path, name)
            if not name.lower().endswith(".wav"):
                continue
            try:
                frames = wav_frames(path)
            except _BadWav as e:
                bad(path, e.reason, e.detail)
                continue
            if folder == BACKGROUND_DIR:
                background.append((path, frames))
                continue
            speaker, sep, _ = name.partition(NOHASH)
            if not (sep and speaker):
                bad(path, NO_SPEAKER)
                continue
            clips.append(Clip(path, speaker, label_of_folder(folder)))
    if skipped:
        logging.warning("%s: skipped %s", root,
                        ", ".join(f"{n} x {r}" for r, n in sorted(skipped.items())))
    return clips, background, skipped


def _by_speaker(clips: Iterable[Clip]) -> dict[str, list[Clip]]:
    out: dict[str, list[Clip]] = collections.defaultdict(list)
    for clip in clips:
        out[clip.speaker_id].append(clip)
    return out


def load_speech_commands(root: str, *, num_test_speakers: int, seed: int = 0,
                         strict: bool = False) -> tuple[KwsCorpus, KwsCorpus]:
    """(train, test) corpora of a Speech-Commands-layout folder; no speaker in both.

    Files listed in ``testing_list.txt`` are the test split (and those in
    ``validation_list.txt`` are left out); without that list,
    `num_test_speakers` speakers drawn with `seed` are held out.
    """
    if not os.path.isdir(root):
        raise KwsCorpusError(f"corpus folder {root} does not exist")
    clips, background, skipped = _index(root, strict)
    if not clips:
        raise KwsCorpusError(f"{root} has no WORD/SPEAKER_nohash_N.wav clips")
    rng = np.random.default_rng(seed)
    testing = _read_list(root, TESTING_LIST)

    def listed(clip: Clip, names: Optional[set[str]]) -> bool:
        return names is not None and os.path.relpath(clip.path, root).replace(os.sep, "/") in names

    if testing is not None:
        validation = _read_list(root, VALIDATION_LIST)
        test = [c for c in clips if listed(c, testing)]
        train = [c for c in clips if not listed(c, testing) and not listed(c, validation)]
        shared = sorted({c.speaker_id for c in train} & {c.speaker_id for c in test})
        if shared:
            raise KwsCorpusError(f"{root}/{TESTING_LIST} shares {len(shared)} speakers with "
                                 f"the training files: {', '.join(shared[:5])}")
    else:
        speakers = sorted({c.speaker_id for c in clips})
        if not 1 <= num_test_speakers < len(speakers):
            raise KwsCorpusError(f"cannot hold out {num_test_speakers} test speakers: "
                                 f"{root} has {len(speakers)} speakers and no {TESTING_LIST}")
        held_out = set(rng.choice(speakers, num_test_speakers, replace=False))
        test = [c for c in clips if c.speaker_id in held_out]
        train = [c for c in clips if c.speaker_id not in held_out]
    train_by, test_by = _by_speaker(train), _by_speaker(test)
    if not train_by or not test_by:
        raise KwsCorpusError(f"{root}: the {'training' if not train_by else 'test'} split is empty")
    # Background noise: 1-s pieces dealt round-robin to a seeded order of all speakers.
    speakers = sorted(train_by) + sorted(test_by)
    order = rng.permutation(len(speakers))
    silence = CLASS_NAMES.index(SILENCE)
    pieces = [(path, start) for path, frames in background
              for start in range(0, frames - CLIP_SAMPLES + 1, CLIP_SAMPLES)]
    for i, (path, start) in enumerate(pieces):
        speaker = speakers[order[i % len(speakers)]]
        split = train_by if speaker in train_by else test_by
        split[speaker].append(Clip(path, speaker, silence, start))
    return KwsCorpus(train_by, skipped), KwsCorpus(test_by, skipped)
