"""The built-in synthetic keyword corpus, written in Speech Commands layout.

Each speaker is one eSpeak NG voice (accent, variant, pitch, rate, as the
ASR task's synthetic speakers) with its own background-noise level and its
own class frequencies (a seeded Dirichlet draw over the classes), so clients
are non-IID in voice and in what they say. Each clip jitters the speaker's
pitch and rate a little and puts the word at a random place in its second.
Layout (read by `tasks.kws.corpus.load_speech_commands`)::

    root/manifest.json
    root/testing_list.txt                  (every clip of the held-out speakers)
    root/WORD/SPEAKER_nohash_N.wav         (commands and filler words, 16 kHz int16)
    root/_silence_/SPEAKER_nohash_N.wav    (the speaker's noise alone)

Generation is a pure function of the parameters: everything random is drawn
in the parent from one seeded generator, eSpeak is reloaded for every word
(`tasks.asr.espeak`) and the WAV files are written by the `wave` module, so
the bytes do not depend on ``num_workers`` or on scheduling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
import wave
from typing import Optional

import numpy as np
from absl import logging

from tasks import corpus_cache
from tasks.asr import espeak
from tasks.asr.synthetic_corpus import (draw_new_voice, process_synthesizer,
                                        resample_to_16k, voice_order)
from tasks.kws import corpus as corpus_lib
from tasks.kws.corpus import CLASS_NAMES, CLIP_SAMPLES, SAMPLE_RATE, KwsCorpusError

# Bump whenever the bytes change for the same parameters: part of the cache name.
GENERATOR_VERSION = 1
# What "unknown" speakers say: Speech Commands' own auxiliary words.
FILLERS = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
           "zero", "one")
RATE_RANGE = (120, 220)  # words per minute; single words have no CTC limit
RATE_JITTER, PITCH_JITTER = 15, 8  # per clip, around the speaker's own
NOISE_DB_RANGE = (-65.0, -45.0)  # the speaker's background noise, dB full scale
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """One clip: the word (None: silence) and its per-clip draws."""

    folder: str
    text: Optional[str]
    number: int
    rate: int
    pitch: int
    offset: float  # where the word starts, as a fraction of the free room
    noise_seed: int


@dataclasses.dataclass(frozen=True)
class SpeakerSpec:
    """One speaker: voice, noise level, class counts and clips."""

    speaker_id: str
    split: str
    accent: str
    variant: str
    pitch: int
    rate: int
    noise_db: float
    class_counts: tuple[int, ...]  # in CLASS_NAMES order
    clips: tuple[ClipSpec, ...]

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"

    def file_name(self, clip: ClipSpec) -> str:
        return f"{clip.folder}/{self.speaker_id}{corpus_lib.NOHASH}{clip.number}.wav"

    def metadata(self) -> dict:
        """Manifest entry (everything but the clips)."""
        fields = dataclasses.asdict(self)
        del fields["clips"]
        fields["class_counts"] = dict(zip(CLASS_NAMES, self.class_counts))
        return fields


def corpus_params(*, num_train_speakers: int, num_test_speakers: int, clips_per_speaker: int,
                  dirichlet_alpha: float, seed: int) -> dict:
    """The parameters that decide the corpus bytes (``num_workers`` does not)."""
    if num_train_speakers < 1 or num_test_speakers < 1 or clips_per_speaker < 1:
        raise ValueError("need >= 1 train speaker, test speaker and clip per speaker")
    if not dirichlet_alpha > 0:
        raise ValueError(f"dirichlet_alpha must be > 0, not {dirichlet_alpha}")
    return {"num_train_speakers": int(num_train_speakers),
            "num_test_speakers": int(num_test_speakers),
            "clips_per_speaker": int(clips_per_speaker),
            "dirichlet_alpha": float(dirichlet_alpha), "seed": int(seed)}


def _plan_clips(rng: np.random.Generator, counts: np.ndarray, rate: int,
                pitch: int) -> tuple[ClipSpec, ...]:
    numbers: dict[str, int] = {}
    clips = []
    for label, count in enumerate(counts):
        name = CLASS_NAMES[label]
        for _ in range(int(count)):
            if name == corpus_lib.SILENCE:
                folder, text = corpus_lib.SILENCE_DIR, None
            elif name == corpus_lib.UNKNOWN:
                folder = text = FILLERS[int(rng.integers(len(FILLERS)))]
            else:
                folder = text = name
            numbers[folder] = numbers.get(folder, -1) + 1
            clips.append(ClipSpec(
                folder=folder, text=text, number=numbers[folder],
                rate=int(np.clip(rate + rng.integers(-RATE_JITTER, RATE_JITTER + 1),
                                 *espeak.RATE_RANGE)),
                pitch=int(np.clip(pitch + rng.integers(-PITCH_JITTER, PITCH_JITTER + 1),
                                  *espeak.PITCH_RANGE)),
                offset=float(rng.random()), noise_seed=int(rng.integers(2**31))))
    return tuple(clips)


def plan_speakers(*, num_train_speakers: int, num_test_speakers: int, clips_per_speaker: int,
                  dirichlet_alpha: float, seed: int) -> list[SpeakerSpec]:
    """All speakers (train first, then held-out test) and their clips, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    combos = voice_order(rng)
    used: set[tuple] = set()
    specs = []
    for index in range(num_train_speakers + num_test_speakers):
        accent, variant = combos[index % len(combos)]
        pitch, rate = draw_new_voice(rng, accent, variant, used, RATE_RANGE)
        noise_db = round(float(rng.uniform(*NOISE_DB_RANGE)), 2)
        counts = rng.multinomial(clips_per_speaker,
                                 rng.dirichlet(np.full(len(CLASS_NAMES), dirichlet_alpha)))
        specs.append(SpeakerSpec(
            speaker_id=f"{index:08x}", split="train" if index < num_train_speakers else "test",
            accent=accent, variant=variant, pitch=pitch, rate=rate, noise_db=noise_db,
            class_counts=tuple(int(c) for c in counts),
            clips=_plan_clips(rng, counts, rate, pitch)))
    return specs


def render_clip(speaker: SpeakerSpec, clip: ClipSpec) -> np.ndarray:
    """int16 [CLIP_SAMPLES]: the speaker's noise plus, unless silence, the word."""
    audio = (np.random.default_rng(clip.noise_seed).standard_normal(CLIP_SAMPLES)
             * (10 ** (speaker.noise_db / 20) * 32768))
    if clip.text is not None:
        samples, rate = process_synthesizer().synthesize(clip.text, voice=speaker.voice,
                                                  rate=clip.rate, pitch=clip.pitch)
        if rate != espeak.SAMPLE_RATE or samples.size == 0:
            raise RuntimeError(f"eSpeak returned {samples.size} samples at {rate} Hz for "
                               f"{clip.text!r} ({speaker.voice})")
        speech = resample_to_16k(samples)[:CLIP_SAMPLES]
        start = int(clip.offset * (CLIP_SAMPLES - speech.size + 1))
        audio[start:start + speech.size] += speech
    return np.clip(np.round(audio), -32768, 32767).astype(np.int16)


def write_wav(path: str, samples: np.ndarray) -> None:
    """16 kHz mono 16-bit PCM WAV (the `wave` module's bytes are deterministic)."""
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(samples.astype("<i2").tobytes())


def _write_speaker(task: tuple[SpeakerSpec, str]) -> int:
    speaker, root = task
    for clip in speaker.clips:
        write_wav(os.path.join(root, speaker.file_name(clip)), render_clip(speaker, clip))
    return len(speaker.clips)


def generate_corpus(root: str, *, num_workers: int = 2, **params) -> str:
    """Writes the corpus of `corpus_params(**params)` into `root` (missing or empty)."""
    params = corpus_params(**params)
    if os.path.isdir(root) and os.listdir(root):
        raise FileExistsError(f"synthetic corpus directory {root} is not empty")
    start = time.perf_counter()
    specs = plan_speakers(**params)
    for folder in sorted({c.folder for s in specs for c in s.clips}):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    tasks = [(spec, root) for spec in specs]
    if num_workers <= 1:
        counts = [_write_speaker(t) for t in tasks]
    else:
        # spawn, not fork: the parent may run TensorFlow threads.
        with multiprocessing.get_context("spawn").Pool(min(num_workers, len(tasks))) as pool:
            counts = pool.map(_write_speaker, tasks, chunksize=1)
    with open(os.path.join(root, corpus_lib.TESTING_LIST), "w", encoding="utf-8") as f:
        f.writelines(sorted(f"{s.file_name(c)}\n" for s in specs if s.split == "test"
                            for c in s.clips))
    splits = {}
    for split in ("train", "test"):
        members = [s for s in specs if s.split == split]
        totals = np.sum([s.class_counts for s in members], axis=0)
        splits[split] = {"num_speakers": len(members), "num_clips": int(totals.sum()),
                         "class_counts": dict(zip(CLASS_NAMES, (int(t) for t in totals)))}
    manifest = {"generator_version": GENERATOR_VERSION, "params": params,
                "sample_rate": SAMPLE_RATE, "class_names": list(CLASS_NAMES),
                "splits": splits, "speakers": [s.metadata() for s in specs]}
    # Written last: a manifest means the corpus is complete.
    with open(os.path.join(root, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    elapsed = time.perf_counter() - start
    logging.info("synthesized %d keyword clips (%d speakers) into %s in %.1f s (%d workers)",
                 sum(counts), len(specs), root, elapsed, max(1, num_workers))
    return root


def corpus_dir_name(**params) -> str:
    """Cache folder name: generator version and a short hash of the parameters."""
    key = json.dumps({"generator_version": GENERATOR_VERSION, **corpus_params(**params)},
                     sort_keys=True)
    return f"kws-espeak-v{GENERATOR_VERSION}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _manifest_matches(corpus_dir: str, params: dict) -> bool:
    try:
        with open(os.path.join(corpus_dir, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return (manifest.get("generator_version") == GENERATOR_VERSION
            and manifest.get("params") == params)


def ensure_corpus(cache_dir: str, *, num_workers: int = 2, **params) -> str:
    """The cached corpus of these parameters, generated on first use
    (`tasks.corpus_cache.build_once`: never half-written)."""
    params = corpus_params(**params)
    final_dir = corpus_cache.build_once(
        cache_dir, corpus_dir_name(**params),
        lambda folder: generate_corpus(folder, num_workers=num_workers, **params),
        flag="--kws_cache_dir", error=KwsCorpusError)
    if not _manifest_matches(final_dir, params):
        raise KwsCorpusError(f"synthetic corpus {final_dir} has no matching {MANIFEST}; "
                             "delete the folder to regenerate it")
    return final_dir
