"""A diverging run stops with one line, keeps its checkpoints and exports nothing."""

from __future__ import annotations

import math

import pytest

from conftest import run_program_here
from tff_prune.program import divergence


@pytest.mark.parametrize("loss, why", [
    (math.nan, "is not finite"),
    (math.inf, "is not finite"),
    (100.5 * 2.0, "over 100x the initial model's held-out loss (2)"),
])
def test_a_diverged_round_is_named(loss, why):
    with pytest.raises(divergence.DivergedError) as raised:
        divergence.check_round_loss(7, loss, 2.0, "--client_learning_rate (this round 1)")
    message = str(raised.value)
    assert raised.value.round_num == 7
    assert message.startswith("training diverged at round 7: its training loss")
    assert why in message and "--client_learning_rate" in message


@pytest.mark.parametrize("loss", [0.0, 2.0, 99.5 * 2.0])
def test_a_training_loss_within_the_factor_passes(loss):
    divergence.check_round_loss(3, loss, 2.0, "the rates")


def test_a_run_whose_clients_diverge_stops_with_one_line_and_exports_nothing(
        tiny_corpus_dir, tmp_path, capsys):
    # What a new user tries: plain SGD at a rate far too large. Before, the
    # run ended with exit 0, WER 1.000 and a TF Serving export.
    result = run_program_here(capsys, [
        f"--corpus_dir={tiny_corpus_dir}/train", f"--test_corpus_dir={tiny_corpus_dir}/test",
        f"--feature_cache_dir={tmp_path / 'features'}", "--model_size=micro",
        "--pruning=none", "--total_rounds=2", "--clients_per_round=2", "--client_epochs=1",
        "--client_optimizer=sgd", "--client_learning_rate=1e6", "--eval_every_rounds=1",
        "--checkpoint_every_rounds=1", "--progress=off", f"--root_output_dir={tmp_path}",
        "--experiment_name=diverged"])
    assert result.returncode == divergence.EXIT_CODE == 5, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [l for l in result.stderr.splitlines() if l.startswith("run_experiment.py:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "training diverged at round 1" in errors[0]
    assert "--client_learning_rate (this round 1e+06)" in errors[0]
    assert "nothing is exported" in errors[0]
    run_dir = tmp_path / "diverged"
    # Nothing of the diverged round is kept: no checkpoint, no metrics row,
    # no summary, no final model, no export.
    assert not list((run_dir / "checkpoints").glob("round_*"))
    for name in ("summary.json", "final_model", "export"):
        assert not (run_dir / name).exists(), name
    # What a sweep reads to record the run as diverged.
    record = divergence.read_record(str(run_dir))
    assert record["round"] == 1 and record["message"] in errors[0]
    metrics = run_dir / "metrics.csv"
    assert not metrics.exists() or len(metrics.read_text().strip().splitlines()) <= 1
