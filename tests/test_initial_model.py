"""`--initial_model`: a federated run starts from a saved model's weights (a seed model)."""

import shutil

import numpy as np

from conftest import REPO
from conftest import FinishedRun
from conftest import run_program_here
from conftest import smoke_cache_flags


def _federated_smoke(shared_dir, tmp_path, *extra):
    return ["--flagfile=bazel_configs/fedavg_dense_smoke.cfg", *smoke_cache_flags(shared_dir),
            f"--root_output_dir={tmp_path}", *extra]


def test_a_federated_run_starts_from_the_seed_models_weights(
        smoke_run, shared_dir, tmp_path, capsys, monkeypatch):
    # The seed model: a centralized run on the same task and architecture.
    seed = smoke_run("centralized_dense_smoke")
    monkeypatch.chdir(REPO)  # the presets name each other from the repository root
    # One round whose clients' steps are ~1e-30 (Adam moves each weight by
    # about the rate per step): the final model is the one round 1 was
    # broadcast, to far below any difference between two initializations.
    result = run_program_here(capsys, _federated_smoke(
        shared_dir, tmp_path, f"--initial_model={seed.path}", "--total_rounds=1",
        "--client_learning_rate=1e-30"))
    assert result.returncode == 0, result.stderr[-3000:]
    started = FinishedRun(tmp_path / "fedavg_dense_smoke")
    assert started.summary["config"]["federated"]["initial_model"] == str(seed.path)
    expected, got = seed.weights(), started.weights()
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-25, err_msg=key)


def test_a_seed_model_of_another_task_or_architecture_is_one_line_and_changes_nothing(
        smoke_run, shared_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    # An experiment already in place (other settings: --overwrite would
    # replace it), which a refused start must leave as it was.
    earlier = tmp_path / "fedavg_dense_smoke"
    shutil.copytree(smoke_run("fedavg_dense_smoke").path, earlier)
    files = {p: p.read_bytes() for p in earlier.rglob("*") if p.is_file()}
    cases = [
        (smoke_run("kws_structured_smoke").path, [],
         "is a 'kws' model; this run trains 'asr'"),
        (smoke_run("fedavg_dense_smoke").path, ["--model_size=tiny"],
         "does not fit this run's model ("),
        (tmp_path / "no_such_run", [], "holds no saved model"),
    ]
    for path, extra, why in cases:
        result = run_program_here(capsys, _federated_smoke(
            shared_dir, tmp_path, f"--initial_model={path}", "--overwrite", *extra))
        assert result.returncode == 2, result.stderr[-3000:]
        errors = [l for l in result.stderr.splitlines() if l.startswith("run_experiment.py:")]
        assert len(errors) == 1, result.stderr[-3000:]
        assert errors[0].startswith(f"run_experiment.py: error: --initial_model={path} ")
        assert why in errors[0], errors[0]
        assert "Traceback" not in result.stderr
        assert {p: p.read_bytes() for p in earlier.rglob("*") if p.is_file()} == files
    # Centralized runs train from their own initialization.
    result = run_program_here(capsys, _federated_smoke(
        shared_dir, tmp_path, f"--initial_model={tmp_path}", "--mode=centralized"))
    assert result.returncode == 2
    assert "--initial_model starts federated runs" in result.stderr
