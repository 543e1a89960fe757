"""Where the KWS task's speakers come from: the built-in corpus or a folder."""

from __future__ import annotations

import dataclasses
from typing import Optional

from tasks.asr.data import DEFAULT_CACHE_DIR
from tasks.kws import corpus as corpus_lib
from tasks.kws import synthetic
from tasks.kws.corpus import KwsCorpus


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """A Speech-Commands-layout folder, or (no `corpus_dir`) the synthetic corpus."""

    corpus_dir: Optional[str] = None
    num_test_speakers: int = 20  # held out of a folder without testing_list.txt
    strict: bool = False
    seed: int = 0
    # Synthetic corpus only.
    cache_dir: str = DEFAULT_CACHE_DIR
    num_train_speakers: int = 100
    clips_per_speaker: int = 40
    dirichlet_alpha: float = 1.0


def load_corpora(config: CorpusConfig, num_workers: int = 2) -> tuple[KwsCorpus, KwsCorpus]:
    """(train, test) corpora; no test speaker is in train."""
    root = config.corpus_dir
    if root is None:
        root = synthetic.ensure_corpus(
            config.cache_dir, num_workers=num_workers,
            num_train_speakers=config.num_train_speakers,
            num_test_speakers=config.num_test_speakers,
            clips_per_speaker=config.clips_per_speaker,
            dirichlet_alpha=config.dirichlet_alpha, seed=config.seed)
    return corpus_lib.load_speech_commands(root, num_test_speakers=config.num_test_speakers,
                                           seed=config.seed, strict=config.strict)
