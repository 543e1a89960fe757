"""run_experiment.py from the command line: results, and one-line errors.

One sparsity figure everywhere: under `--structure=head` only the attention
kernels are pruned, and every report of a run (metrics.csv, eval.csv,
summary.json; federated and centralized alike) reads the pruned fraction of
*those* masks (`stats.mask_sparsity` over `MaskDecider.covered_keys`), not a
figure diluted by the kernels the structure never touches.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from conftest import run_program_here
from conftest import shell_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, timeout=600):
    """run_experiment.py as a user runs it: its own process."""
    env = shell_env(PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, os.path.join(REPO, "run_experiment.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def _caches(folder) -> list[str]:
    """Cache flags in a test's own folder (their defaults are in the checkout)."""
    return [f"--corpus_cache_dir={folder / 'caches'}",
            f"--feature_cache_dir={folder / 'caches' / 'features'}"]


def _run_here(capsys, args):
    return run_program_here(capsys, args)


def _assert_one_line_error(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [l for l in result.stderr.splitlines() if "error" in l.lower()]
    assert len(errors) == 1, result.stderr[-3000:]
    message = errors[0]
    for needle in needles:
        assert needle in message, result.stderr[-3000:]


# micro: 2 heads per block, so 50% of heads is exactly one head each.
_HEAD_PRUNING = ["--model_size=micro", "--pruning=structured", "--structure=head",
                 "--mask_policy=fixed", "--target_sparsity=0.5", "--prune_begin_round=1",
                 "--prune_end_round=2", "--refine_rounds=0", "--prune_every_rounds=1"]


def _column(path, name):
    with open(path) as f:
        return [float(row[name]) for row in csv.DictReader(f)]


def _assert_head_sparsity_everywhere(out):
    # The last metrics row is after the (fixed) mask decision; every eval
    # row is after it too.
    assert _column(out / "metrics.csv", "sparsity")[-1] == pytest.approx(0.5, abs=1e-3)
    for value in _column(out / "eval.csv", "sparsity"):
        assert value == pytest.approx(0.5, abs=1e-3)
    final = json.loads((out / "summary.json").read_text())["final"]
    assert final["sparsity"] == pytest.approx(0.5, abs=1e-3)
    per_layer = final["sparsity_per_layer"]
    assert per_layer["overall"] == pytest.approx(0.5, abs=1e-3)
    layers = {k: v for k, v in per_layer.items() if k != "overall"}
    # Only attention kernels are reported, each at the target.
    assert layers and all("mhsa" in k for k in layers), sorted(layers)
    for key, value in layers.items():
        assert value == pytest.approx(0.5, abs=1e-3), key


def test_federated_run_prints_wer_cer_and_writes_results(tiny_corpus_dir, tmp_path, capsys):
    # A corpus with one corrupt file (skipped, with an absl warning) while
    # stderr is not a terminal: the warning must not hit a closed stream.
    corpus = tmp_path / "corpus"
    shutil.copytree(os.path.join(tiny_corpus_dir, "train"), corpus)
    flac = sorted(corpus.rglob("*.flac"))[0]
    flac.write_bytes(flac.read_bytes()[:200])
    args = [f"--corpus_dir={corpus}", f"--test_corpus_dir={tiny_corpus_dir}/test",
            f"--feature_cache_dir={tmp_path / 'features'}",
            *_HEAD_PRUNING, "--total_rounds=2", "--clients_per_round=2",
            "--client_epochs=1", "--eval_every_rounds=1",
            f"--root_output_dir={tmp_path}", "--experiment_name=smoke"]
    # A failed start (cohort too large) records nothing, so the corrected
    # command below is not refused as "exists with different settings".
    failed = _run_here(capsys, [*args, "--clients_per_round=50"])
    _assert_one_line_error(failed, "--clients_per_round=50", "training population")
    result = _run([*args, f"--export_dir={tmp_path / 'export'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Logging error" not in result.stderr, result.stderr[-3000:]
    assert "held-out WER" in result.stdout and "CER" in result.stdout
    out = tmp_path / "smoke"
    summary = json.loads((out / "summary.json").read_text())
    # The printed scores are the summary's (the run's own held-out evaluation).
    final = summary["final"]
    assert f"held-out WER {final['wer']:.3f}  CER {final['cer']:.3f}" in result.stdout
    evals = list(csv.DictReader(open(out / "eval.csv")))
    assert float(evals[-1]["wer"]) == pytest.approx(final["wer"])
    assert float(evals[-1]["cer"]) == pytest.approx(final["cer"])
    assert 0.0 < final["cer"] <= 1.0 and 0.0 < final["wer"]
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("round,") and len(rows) == 3
    assert (out / "final_model" / "weights.index").exists()
    # The pruned model was exported for TF Serving, where the run says.
    (version,) = [v for v in os.listdir(tmp_path / "export" / "asr") if v.isdigit()]
    assert (tmp_path / "export" / "asr" / version / "saved_model.pb").exists()
    # With the on-device training artifact of the exported model, training
    # with the run's client optimizer (Adam at 3e-3).
    version_dir = tmp_path / "export" / "asr" / version
    interpreter = tf.lite.Interpreter(
        model_content=(version_dir / "assets.extra" / "train.tflite").read_bytes())
    assert set(interpreter.get_signature_list()) == {"train", "infer", "save", "restore"}
    optimizer = json.loads((version_dir / "assets.extra" / "export_metadata.json").read_text())[
        "export"]["train_optimizer"]
    assert optimizer["learning_rate"] == pytest.approx(3e-3) and "beta_2" in optimizer
    assert f"export:  {tmp_path / 'export' / 'asr' / version}" in result.stdout
    assert (out / "logs" / "tff_worker.log").exists()
    _assert_head_sparsity_everywhere(out)


def test_centralized_run_reports_the_same_sparsity_figure(tiny_corpus_dir, tmp_path,
                                                          capsys):
    result = _run_here(capsys, [f"--corpus_dir={tiny_corpus_dir}/train",
                                f"--feature_cache_dir={tmp_path / 'features'}",
                   f"--test_corpus_dir={tiny_corpus_dir}/test", *_HEAD_PRUNING,
                   "--mode=centralized", "--total_rounds=2", "--centralized_epochs=2",
                   "--eval_every_epochs=1", "--progress=off", "--export_dir=none",
                   f"--root_output_dir={tmp_path}", "--experiment_name=central"])
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_head_sparsity_everywhere(tmp_path / "central")


def test_overwrite_with_a_bad_corpus_deletes_nothing(tmp_path, capsys):
    """Reproduction: --overwrite used to delete the folder, then fail."""
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    result = _run_here(capsys, ["--experiment_name=x", "--overwrite", "--corpus_dir=/nope",
                                *_caches(tmp_path / "x"),
                                f"--root_output_dir={tmp_path}"])
    _assert_one_line_error(result, "not a tff-prune experiment")
    assert (folder / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(folder)) == ["notes.txt"]


@pytest.mark.parametrize("args,needles", [
    (["--pruning=magic"], ["pruning", "magic"]),
    (["--target_sparsity=1.2"], ["target_sparsity"]),
    (["--pruning=m_by_n", "--target_sparsity=0.7"], ["m_by_n", "0.5"]),
    (["--corpus_dir=/nonexistent/librispeech"], ["/nonexistent/librispeech", "does not exist"]),
    (["--worker_concurrency=-2"], ["--worker_concurrency", ">= -1", "-2"]),
])
def test_bad_flags_fail_with_one_line(tmp_path, args, needles, capsys):
    result = _run_here(capsys, [*args, *_caches(tmp_path), f"--root_output_dir={tmp_path}"])
    _assert_one_line_error(result, *needles)
    # Nothing written for a run that never started.
    assert sorted(os.listdir(tmp_path)) in ([], ["caches"])
    assert not os.path.exists(tmp_path / "caches" / "features")


def test_corrupt_audio_under_strict_data_fails_with_one_line(tiny_corpus_dir, tmp_path,
                                                            capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(os.path.join(tiny_corpus_dir, "train"), corpus)
    flac = sorted(corpus.rglob("*.flac"))[0]
    flac.write_bytes(flac.read_bytes()[:200])
    result = _run_here(capsys, [f"--corpus_dir={corpus}", "--num_test_speakers=1",
                                "--strict_data", f"--feature_cache_dir={tmp_path / 'features'}",
                                f"--root_output_dir={tmp_path / 'out'}"])
    _assert_one_line_error(result, flac.name)
