"""TF Serving layout and versioning rules, and loading saved runs (no SavedModel needed)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tasks.asr import model as model_lib
from tasks.asr import text
from tff_prune.export import checkpoint
from tff_prune.export import pipeline
from tff_prune.export import serving_layout
from tff_prune.program import registry


def _writer(content):
    def write(path):
        os.makedirs(path)
        with open(os.path.join(path, "saved_model.pb"), "w") as f:
            f.write(content)
    return write


def test_versions_count_up_and_ignore_non_integer_entries(tmp_path):
    model_dir = tmp_path / "asr"
    model_dir.mkdir()
    (model_dir / "7").mkdir()
    (model_dir / "notes").mkdir()          # not a version for TF Serving either
    (model_dir / "12.bak").mkdir()
    (model_dir / "9").write_text("a file, not a version")
    assert serving_layout.existing_versions(str(model_dir)) == [7]
    first = serving_layout.write_new_version(str(tmp_path), "asr", _writer("a"))
    second = serving_layout.write_new_version(str(tmp_path), "asr", _writer("b"))
    # 8 follows 7; 9 is taken by a file, which is not replaced either.
    assert (first.version, second.version) == (8, 10)
    assert (model_dir / "9").read_text() == "a file, not a version"
    assert first.path == str(model_dir / str(first.version))
    assert (model_dir / str(first.version) / "saved_model.pb").read_text() == "a"
    assert (model_dir / str(second.version) / "saved_model.pb").read_text() == "b"


def test_a_failed_export_leaves_nothing(tmp_path):
    def broken(path):
        os.makedirs(path)
        open(os.path.join(path, "partial"), "w").close()
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        serving_layout.write_new_version(str(tmp_path), "asr", broken)
    assert os.listdir(tmp_path / "asr") == []  # no temporary, no version
    with pytest.raises(RuntimeError, match="left nothing"):
        serving_layout.write_new_version(str(tmp_path), "asr", lambda path: None)
    assert serving_layout.existing_versions(str(tmp_path / "asr")) == []


def test_a_version_taken_during_the_write_is_never_replaced(tmp_path):
    model_dir = tmp_path / "asr"

    def racing(path):
        _writer("mine")(path)
        # Another (lock-ignoring) exporter finishes version 1 meanwhile.
        (model_dir / "1").mkdir()
        (model_dir / "1" / "saved_model.pb").write_text("theirs")

    result = serving_layout.write_new_version(str(tmp_path), "asr", racing)
    assert result.version == 2
    assert (model_dir / "1" / "saved_model.pb").read_text() == "theirs"
    assert (model_dir / "2" / "saved_model.pb").read_text() == "mine"
    assert not [n for n in os.listdir(model_dir) if n.startswith(".tmp-")]


def test_bad_model_names_are_refused(tmp_path):
    for name in ("", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            serving_layout.write_new_version(str(tmp_path), name, _writer("x"))


def test_compact_auto_follows_the_pruning_scheme():
    assert pipeline.should_compact("auto", {"scheme": "structured", "structure": "head"})
    assert not pipeline.should_compact("auto", {"scheme": "unstructured"})
    assert not pipeline.should_compact("auto", {})
    assert pipeline.should_compact("yes", {})
    with pytest.raises(ValueError):
        pipeline.should_compact("maybe", {})


def test_loads_a_run_without_model_config_from_its_summary(tmp_path):
    """Centralized runs write final_model/weights but no model_config.json."""
    tf.keras.utils.set_random_seed(3)
    model = model_lib.build_conformer_ctc(model_lib.ConformerConfig.tiny(), text.VOCAB_SIZE)
    (tmp_path / "final_model").mkdir()
    model.save_weights(str(tmp_path / "final_model" / "weights"))
    with pytest.raises(FileNotFoundError, match="cannot tell which model"):
        checkpoint.load_saved_run(str(tmp_path), registry.task_export)
    summary = {"config": {"task": {"model_size": "tiny", "dropout": 0.0,
                                   "feature": {"num_mel_bins": 80, "top_db": 80.0}},
                          "pruning": {"scheme": "none"}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    for path in (tmp_path, tmp_path / "final_model", tmp_path / "final_model" / "weights"):
        run = checkpoint.load_saved_run(str(path), registry.task_export)
        assert run.task_export.model_config == model_lib.ConformerConfig.tiny(dropout=0.0)
        assert run.pruning == {"scheme": "none"}
        for a, b in zip(run.model.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.load_saved_run(str(tmp_path / "missing"), registry.task_export)


def test_loads_a_run_without_model_config_from_a_named_task_config(tmp_path):
    """Newer summaries: config.task_name and the task's config ({"corpus", "model"})."""
    tf.keras.utils.set_random_seed(4)
    model = model_lib.build_conformer_ctc(model_lib.ConformerConfig.tiny(), text.VOCAB_SIZE)
    (tmp_path / "final_model").mkdir()
    model.save_weights(str(tmp_path / "final_model" / "weights"))
    summary = {"config": {"task_name": "asr",
                          "task": {"corpus": {"corpus_dir": None},
                                   "model": {"model_size": "tiny", "dropout": 0.0,
                                             "feature": {"num_mel_bins": 80}}},
                          "pruning": {"scheme": "structured"}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    run = checkpoint.load_saved_run(str(tmp_path), registry.task_export)
    assert run.task_export.model_name == "asr"
    assert run.task_export.model_config == model_lib.ConformerConfig.tiny(dropout=0.0)
    assert run.pruning == {"scheme": "structured"}
    for a, b in zip(run.model.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
