"""Centralized runs checkpoint every epoch and resume to the same result."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tff_prune.centralized import training
from tff_prune.pruning import config as config_lib
from tff_prune.pruning import schedule as schedule_lib


class _Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def micro_task(tiny_corpus_dir, tmp_path_factory):
    from tasks.asr import librispeech
    from tasks.asr import task as task_lib

    train = librispeech.load_librispeech(os.path.join(tiny_corpus_dir, "train"))
    test = librispeech.load_librispeech(os.path.join(tiny_corpus_dir, "test"))
    return task_lib.AsrTask(train, test, task_lib.AsrTaskConfig(
        model_size="micro", dropout=0.1, batch_size=4),
        feature_cache_dir=str(tmp_path_factory.mktemp("features")))


def test_interrupted_centralized_pruning_resumes_bit_for_bit(micro_task, tmp_path):
    config = training.CentralizedConfig(epochs=3, eval_every_epochs=3, warmup_steps=2,
                                           learning_rate=3e-3, seed=5)
    # Rounds = epochs: masks change after epochs 1 and 2, so the resume
    # crosses a mask update and needs the pruner's dense copies back.
    pruning = config_lib.PruningConfig(
        scheme="structured", structure="column",
        schedule=schedule_lib.PruningSchedule(kind="step", target_sparsity=0.5,
                                              begin_round=1, end_round=2,
                                              every_rounds=1, refine_rounds=0))

    def train(checkpoint_dir, on_epoch_end=None):
        # As in a fresh process: auto-generated layer names (which seed the
        # stateless dropout) restart from zero.
        tf.keras.backend.clear_session()
        return training.train_centralized(
            micro_task, config, pruning=pruning, total_rounds=3,
            checkpoint_dir=str(checkpoint_dir), on_epoch_end=on_epoch_end)

    reference, _ = train(tmp_path / "reference")

    def stop_in_epoch_two(epoch, record):
        if epoch == 2:  # after epoch 1's checkpoint, before epoch 2's
            raise _Interrupt()

    with pytest.raises(_Interrupt):
        train(tmp_path / "run", stop_in_epoch_two)
    resumed, history = train(tmp_path / "run")
    assert [r["epoch"] for r in history] == [2, 3]  # it did resume
    for a, b in zip(reference.weights, resumed.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    assert "test_cer" in history[-1]

    # A finished run asked again only evaluates.
    again, history = train(tmp_path / "run")
    assert [r["epoch"] for r in history] == [3] and "test_cer" in history[0]
