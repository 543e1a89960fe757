"""The experiment directory: nothing is deleted or recorded before a run has
started, settings that do not change results never block a resume, and a
damaged checkpoint costs rounds, not the run."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow_federated as tff
from absl import flags

from tasks.asr import data as data_lib
from tasks.asr import spec as asr_spec
from tff_prune.program import checkpoints as checkpoints_lib
from tff_prune.program import experiment
from tff_prune.program import experiment_config
from tff_prune.program import experiment_flags
from tff_prune.program import output_dir
from tff_prune.pruning import config as config_lib

RECORD = {"mode": "federated", "seed": 0, "federated.total_rounds": 4,
          "checkpoint_every_rounds": 5, "federated.eval_every_rounds": 10,
          "corpus.cache_dir": "/a", "corpus.strict": False, "pruning.scheme": "structured"}


def _recorded(tmp_path, record=RECORD):
    path = str(tmp_path / "run")
    output_dir.commit_output_dir(output_dir.plan_output_dir(path, dict(record), False))
    return path


def test_a_folder_that_is_not_an_experiment_is_never_replaced(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(config_lib.ConfigError, match="not a tff-prune experiment"):
            output_dir.plan_output_dir(str(folder), dict(RECORD), overwrite)
    assert (folder / "thesis.tex").read_text() == "precious"


def test_overwrite_deletes_nothing_until_commit(tmp_path):
    path = _recorded(tmp_path)
    (tmp_path / "run" / "metrics.csv").write_text("round\n1\n")
    plan = output_dir.plan_output_dir(path, {**RECORD, "seed": 1}, overwrite=True)
    assert plan.replace
    assert (tmp_path / "run" / "metrics.csv").exists()  # planning changed nothing
    output_dir.commit_output_dir(plan)
    assert not (tmp_path / "run" / "metrics.csv").exists()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["seed"] == 1


def test_different_results_are_refused_naming_the_setting(tmp_path):
    path = _recorded(tmp_path)
    with pytest.raises(config_lib.ConfigError, match=r"pruning\.scheme.*--overwrite"):
        output_dir.plan_output_dir(path, {**RECORD, "pruning.scheme": "block"}, False)


def _record_of(config) -> dict:
    """The record a real run writes (flattened config), as experiment.run makes it."""
    return output_dir.flatten(experiment_config.jsonable(dataclasses.asdict(config)))


def test_a_setting_added_since_resumes_at_its_default_and_is_refused_at_another(tmp_path):
    # An experiment recorded before `federated.initial_model` existed.
    path = _recorded(tmp_path)
    defaults = {"federated.initial_model": "", "seed": 7}
    plan = output_dir.plan_output_dir(
        path, {**RECORD, "federated.initial_model": ""}, False, defaults=defaults)
    assert plan.resume
    with pytest.raises(config_lib.ConfigError,
                       match=r"federated\.initial_model \('' -> '/seed'\)"):
        output_dir.plan_output_dir(
            path, {**RECORD, "federated.initial_model": "/seed"}, False, defaults=defaults)
    # Only missing settings take their default: a recorded one is compared as is.
    with pytest.raises(config_lib.ConfigError, match=r"seed \(0 -> 7\)"):
        output_dir.plan_output_dir(path, {**RECORD, "seed": 7}, False, defaults=defaults)


def test_cadence_caches_strictness_and_workers_never_block_a_resume(tmp_path):
    # Records of real configs, so a key renamed in the config cannot leave
    # NON_RESULT_KEYS naming keys no run writes.
    base = experiment_config.ExperimentConfig()
    path = _recorded(tmp_path, _record_of(base))
    corpus = dataclasses.replace(base.task.corpus, cache_dir="/elsewhere",
                                 feature_cache_dir="/features/elsewhere", strict=True)
    other = dataclasses.replace(
        base, checkpoint_every_rounds=1,
        task=dataclasses.replace(base.task, corpus=corpus),
        federated=dataclasses.replace(
            base.federated, eval_every_rounds=1, workers=("a:1", "b:2"), local_workers=3,
            datasets_on_workers=False, worker_lost_after_s=60.0))
    record = _record_of(other)
    assert record.keys() - output_dir.NON_RESULT_KEYS == _record_of(base).keys() - \
        output_dir.NON_RESULT_KEYS
    assert output_dir.NON_RESULT_KEYS - {"root_output_dir", "experiment_name",
                                          "centralized.eval_every_epochs"} <= record.keys()
    plan = output_dir.plan_output_dir(path, record, overwrite=False)
    assert plan.resume and not plan.replace


def test_more_rounds_extend_a_federated_run_and_fewer_are_refused(tmp_path):
    path = _recorded(tmp_path)
    plan = output_dir.plan_output_dir(path, {**RECORD, "federated.total_rounds": 8}, False)
    assert plan.resume
    with pytest.raises(config_lib.ConfigError, match="total_rounds"):
        output_dir.plan_output_dir(path, {**RECORD, "federated.total_rounds": 2}, False)
    centralized = _recorded(tmp_path / "c", {**RECORD, "mode": "centralized"})
    with pytest.raises(config_lib.ConfigError, match="total_rounds"):
        # Centralized pruning maps rounds onto steps: more rounds is another run.
        output_dir.plan_output_dir(
            centralized, {**RECORD, "mode": "centralized", "federated.total_rounds": 8}, False)


def test_failed_start_records_nothing(tmp_path):
    """A missing corpus stops the run before config.json exists, so the
    corrected command is not refused as 'exists with different settings'."""
    config = experiment_config.ExperimentConfig(
        root_output_dir=str(tmp_path), experiment_name="run",
        task=asr_spec.AsrConfig(corpus=data_lib.CorpusConfig(corpus_dir=str(tmp_path / "nope"))))
    with pytest.raises(experiment.USER_ERRORS):
        experiment.run(config)
    assert not (tmp_path / "run" / "config.json").exists()


def test_unreadable_latest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
    checkpoints = tmp_path / "checkpoints"
    manager = tff.program.FileProgramStateManager(str(checkpoints), prefix="round_")
    structure = [np.zeros(3, np.float32)]
    for version in (2, 4):
        checkpoints_lib.sync(manager.save([np.full(3, version, np.float32)], version))
    for name in os.listdir(checkpoints / "round_4"):  # damage the newest save
        if name.endswith(".pb"):
            (checkpoints / "round_4" / name).write_bytes(b"truncated")
    leftover = checkpoints / "round_5_temp99"
    leftover.mkdir()
    state, version = checkpoints_lib.load_latest_readable_checkpoint(
        manager, str(checkpoints), structure)
    assert version == 2
    np.testing.assert_array_equal(np.asarray(state[0]), np.full(3, 2, np.float32))
    err = capsys.readouterr().err
    assert "round_4 is unreadable" in err and len(err.strip().splitlines()) == 1
    assert not leftover.exists()  # TFF's half-written leftovers are cleaned up


def _config_from(*args):
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["run_experiment.py", *args])
        return experiment_flags.experiment_config_from_flags()
    finally:
        flags.FLAGS.unparse_flags()


@pytest.mark.parametrize("args,needle", [
    (["--seed=-1"], "--seed"),
    (["--dropout=1.5"], "--dropout"),
    (["--exclude_layers=["], "--exclude_layers"),
    (["--mode=centralized", "--centralized_epochs=0"], "--centralized_epochs"),
    (["--mode=centralized", "--eval_every_epochs=0"], "--eval_every_epochs"),
    # Rounds start at 1: a fixed mask decided "after round 0" was never decided.
    (["--mask_policy=fixed", "--prune_begin_round=0"], "--prune_begin_round"),
])
def test_bad_values_are_one_line_config_errors(args, needle):
    with pytest.raises(config_lib.ConfigError) as raised:
        _config_from(*args)
    message = str(raised.value)
    assert needle in message and "\n" not in message
