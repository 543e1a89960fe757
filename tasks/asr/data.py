"""Where the ASR task's speakers come from: the built-in corpus or a directory."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

from tasks.asr import librispeech
from tasks.asr import synthetic_corpus
from tasks.asr.corpus import CorpusError, SpeechCorpus

_DATA_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data")
DEFAULT_CACHE_DIR = os.path.join(_DATA_DIR, "synthetic")
# The same default as `python -m tff_prune.worker --feature_cache_dir`.
DEFAULT_FEATURE_CACHE_DIR = os.path.join(_DATA_DIR, "features")


# What `CorpusConfig.train_split` may name.
TRAIN_SPLITS = ("train", synthetic_corpus.PUBLIC_SPLIT)


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """Either the synthetic eSpeak corpus (no `corpus_dir`) or LibriSpeech layout."""

    corpus_dir: Optional[str] = None
    test_corpus_dir: Optional[str] = None
    num_test_speakers: int = 20
    strict: bool = False
    # Synthetic corpus only.
    cache_dir: str = DEFAULT_CACHE_DIR
    num_train_speakers: int = 200
    utterances_per_speaker: int = 30
    seed: int = 0
    # Speakers beyond the clients and the held-out ones, and which speakers
    # are trained on: "train" (the clients) or "public" (those others, e.g.
    # for a seed model that never saw a client's data).
    num_public_speakers: int = 0
    train_split: str = "train"
    # Per-speaker log-mel shards (any corpus), see `tasks.asr.feature_cache`.
    feature_cache_dir: str = DEFAULT_FEATURE_CACHE_DIR

    def __post_init__(self) -> None:
        # Each field is a flag of the same name; zero speakers or utterances
        # would otherwise surface as an empty split deep inside training.
        for flag in ("num_test_speakers", "num_train_speakers", "utterances_per_speaker"):
            value = getattr(self, flag)
            if value < 1:
                raise CorpusError(f"--{flag} must be >= 1, got {value}")
        if self.num_public_speakers < 0:
            raise CorpusError(f"--num_public_speakers must be >= 0, got {self.num_public_speakers}")
        if self.train_split not in TRAIN_SPLITS:
            raise CorpusError(f"--train_split={self.train_split!r} is not one of: "
                              f"{', '.join(TRAIN_SPLITS)}")
        if self.train_split == synthetic_corpus.PUBLIC_SPLIT and (
                self.corpus_dir is not None or self.num_public_speakers < 1):
            raise CorpusError("--train_split=public trains on the built-in corpus's public "
                              "speakers: set --num_public_speakers >= 1 (without --corpus_dir)")


def _check_disjoint(train: SpeechCorpus, test: SpeechCorpus, config: CorpusConfig) -> None:
    """Refuses a test corpus that shares speakers with the training corpus."""
    shared = sorted(set(train.client_ids) & set(test.client_ids))
    if shared:
        first = ", ".join(shared[:5]) + (", ..." if len(shared) > 5 else "")
        raise CorpusError(
            f"--test_corpus_dir={config.test_corpus_dir} shares {len(shared)} speakers with"
            f" --corpus_dir={config.corpus_dir}: {first}")


def load_corpora(config: CorpusConfig, *, verify_audio: bool = True,
                 ) -> tuple[SpeechCorpus, SpeechCorpus]:
    """(train, test) corpora; the test speakers are never in train. The
    built-in corpus trains on its `train_split` ("public": speakers that are
    neither clients nor held out).

    With `corpus_dir` and no `test_corpus_dir`, `num_test_speakers` speakers
    chosen by `seed` are held out of `corpus_dir`. `verify_audio=False` reads
    audio headers only (`librispeech.load_librispeech`).
    """
    def load(root: str) -> SpeechCorpus:
        return librispeech.load_librispeech(root, strict=config.strict,
                                            verify_audio=verify_audio)

    if config.corpus_dir is None:
        root = synthetic_corpus.ensure_synthetic_corpus(
            config.cache_dir,
            num_train_speakers=config.num_train_speakers,
            num_test_speakers=config.num_test_speakers,
            utterances_per_speaker=config.utterances_per_speaker,
            seed=config.seed, num_public_speakers=config.num_public_speakers)
        return (load(os.path.join(root, config.train_split)),
                load(os.path.join(root, "test")))
    corpus = load(config.corpus_dir)
    if config.test_corpus_dir is not None:
        test = load(config.test_corpus_dir)
        _check_disjoint(corpus, test, config)
        return corpus, test
    speakers = list(corpus.client_ids)
    if config.num_test_speakers >= len(speakers):
        raise CorpusError(
            f"--num_test_speakers={config.num_test_speakers} leaves no training "
            f"speakers: {config.corpus_dir} has {len(speakers)}")
    rng = np.random.default_rng(config.seed)
    held_out = set(rng.choice(speakers, config.num_test_speakers, replace=False))
    return (corpus.filter_utterances(lambda u: u.speaker_id not in held_out),
            corpus.filter_utterances(lambda u: u.speaker_id in held_out))
