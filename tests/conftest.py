"""Shared pytest fixtures: the tiny synthetic speech corpus."""

from __future__ import annotations

import pytest

# Replaces TFF's default context (which would start an unowned worker) before
# any test can touch it; tests get workers only from the `tff_runtime` fixture.
import tff_prune.runtime  # noqa: F401  pylint: disable=unused-import

# 4 train + 2 held-out test speakers x 6 utterances; ~0.5 s to synthesize.
TINY_CORPUS_PARAMS = {
    "num_train_speakers": 4,
    "num_test_speakers": 2,
    "utterances_per_speaker": 6,
    "seed": 0,
}


@pytest.fixture(scope="session")
def tiny_corpus_params() -> dict:
    """The parameters ``tiny_corpus_dir`` was generated with (a fresh copy)."""
    return dict(TINY_CORPUS_PARAMS)


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory) -> str:
    """Root of a tiny synthetic corpus, generated once per session. Treat it as read-only.

    ``<root>/train`` and ``<root>/test`` are LibriSpeech-layout directories
    (load them with ``tasks.asr.librispeech.load_librispeech``); ``<root>/manifest.json``
    describes the speakers.
    """
    from tasks.asr.synthetic_corpus import generate_synthetic_corpus

    root = tmp_path_factory.mktemp("tiny_corpus") / "corpus"
    # In-process (num_workers=1): a spawn pool would cost more than the synthesis.
    return generate_synthetic_corpus(str(root), num_workers=1, **TINY_CORPUS_PARAMS)


@pytest.fixture(scope="session")
def micro_task(tiny_corpus_dir, tmp_path_factory):
    """The ASR task on the tiny corpus: micro Conformer, no dropout, batch 4
    (its feature cache in a session temporary folder)."""
    import os

    from tasks.asr import librispeech
    from tasks.asr import task as task_lib

    train = librispeech.load_librispeech(os.path.join(tiny_corpus_dir, "train"))
    test = librispeech.load_librispeech(os.path.join(tiny_corpus_dir, "test"))
    return task_lib.AsrTask(train, test, task_lib.AsrTaskConfig(
        model_size="micro", dropout=0.0, batch_size=4),
        feature_cache_dir=str(tmp_path_factory.mktemp("features")))


@pytest.fixture(scope="session")
def tff_runtime(tmp_path_factory):
    """One owned TFF runtime for the whole session (workers stopped at the end)."""
    from tff_prune import runtime

    with runtime.local_runtime(log_dir=str(tmp_path_factory.mktemp("tff_logs"))) as rt:
        yield rt


# The end-to-end runs (each a run_experiment.py subprocess of 45-90 s) go
# first, so that pytest-xdist fills the end of the run with short tests
# instead of leaving one worker idle behind the longest ones.
_LONG_MODULES = ("test_program.py", "test_distributed.py", "test_presets.py", "test_report.py",
                 "test_cli.py", "test_centralized_resume.py", "test_process.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return _LONG_MODULES.index(name) if name in _LONG_MODULES else len(_LONG_MODULES)
    items.sort(key=rank)  # stable: each module keeps its own order
