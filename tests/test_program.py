"""The experiment program survives interruption: resume equals an uninterrupted run."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME_COLUMNS = {"round_seconds"}


def _args(tiny_corpus_dir, root, name="run", **overrides):
    flags = {
        "corpus_dir": f"{tiny_corpus_dir}/train", "test_corpus_dir": f"{tiny_corpus_dir}/test",
        "model_size": "micro", "pruning": "structured", "total_rounds": 4,
        "clients_per_round": 2, "client_epochs": 1, "prune_begin_round": 1,
        "prune_end_round": 3, "prune_every_rounds": 1, "refine_rounds": 1,
        "eval_every_rounds": 2, "checkpoint_every_rounds": 2, "progress": "off",
        "root_output_dir": root, "experiment_name": name}
    flags.update(overrides)
    return [sys.executable, os.path.join(REPO, "run_experiment.py"),
            *[f"--{k}={v}" for k, v in flags.items()]]


def _csv(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in rows]


def _weights(run_dir):
    reader = tf.train.load_checkpoint(os.path.join(run_dir, "final_model", "weights"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if "OPTIMIZER" not in k}


def test_killed_run_resumes_to_the_same_result(tiny_corpus_dir, tmp_path):
    ref = subprocess.run(_args(tiny_corpus_dir, tmp_path, "reference"),
                         capture_output=True, text=True, timeout=900, cwd=REPO)
    assert ref.returncode == 0, ref.stderr[-3000:]

    root = tmp_path / "interrupted"
    proc = subprocess.Popen(_args(tiny_corpus_dir, root), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=REPO)
    checkpoint = root / "run" / "checkpoints" / "round_2"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), "round 2's checkpoint never appeared"
    proc.send_signal(signal.SIGKILL)  # no cleanup, mid-round 3 at the earliest
    proc.wait()
    assert not (root / "run" / "summary.json").exists()
    # A half-written checkpoint (as a crash during a save leaves) is ignored.
    partial = root / "run" / "checkpoints" / "round_3_temp1234"
    partial.mkdir(exist_ok=True)
    (partial / "saved_model.pb").write_bytes(b"truncated")

    resumed = subprocess.run(_args(tiny_corpus_dir, root), capture_output=True, text=True,
                             timeout=900, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref_dir, run_dir = tmp_path / "reference", root / "run"
    for name in ("metrics.csv", "eval.csv"):
        expected, got = _csv(ref_dir / name), _csv(run_dir / name)
        assert [r["round"] for r in got] == [r["round"] for r in expected]
        assert got == expected, name
    expected, got = _weights(ref_dir), _weights(run_dir)
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_more_rounds_extend_other_settings_are_refused_and_export_errors_keep_the_model(
        tiny_corpus_dir, tmp_path):
    run_dir = tmp_path / "run"
    one_round = dict(total_rounds=1, eval_every_rounds=1, prune_end_round=1,
                     refine_rounds=0, export_dir="none")
    first = subprocess.run(_args(tiny_corpus_dir, tmp_path, **one_round),
                           capture_output=True, text=True, timeout=600, cwd=REPO)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir / "keep.txt").write_text("results")

    # More rounds, another checkpoint and eval cadence: the run is extended
    # from its checkpoint. The export then fails (its base is a file): one
    # line, and the trained model stays.
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    extended = subprocess.run(
        _args(tiny_corpus_dir, tmp_path, **{**one_round, "total_rounds": 2,
                                            "checkpoint_every_rounds": 1,
                                            "export_dir": blocker / "export"}),
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert extended.returncode != 0
    assert "Traceback" not in extended.stderr, extended.stderr[-3000:]
    errors = [l for l in extended.stderr.splitlines() if "error" in l]
    assert len(errors) == 1 and "export" in errors[0], extended.stderr[-3000:]
    assert [r["round"] for r in _csv(run_dir / "metrics.csv")] == ["1", "2"]
    assert (run_dir / "final_model" / "weights.index").exists()
    assert _weights(run_dir)

    second = subprocess.run(
        _args(tiny_corpus_dir, tmp_path, **{**one_round, "total_rounds": 2},
              target_sparsity=0.7),
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert second.returncode == 2
    errors = [l for l in second.stderr.splitlines() if "error" in l]
    assert len(errors) == 1 and "target_sparsity" in errors[0] and "--overwrite" in errors[0]
    assert (run_dir / "keep.txt").read_text() == "results"  # nothing lost
    assert (run_dir / "summary.json").exists()
