"""The experiment program survives interruption (a dead TFF worker, a killed
run): resume equals an uninterrupted run."""

import csv
import json
import os
import signal
import sys

import numpy as np
import psutil
import pytest
import tensorflow as tf

from conftest import PausedRun
from conftest import run_program_here

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Measurements of the machine, not results: they differ between equal runs.
TIME_COLUMNS = {"round_seconds", "worker_peak_rss_bytes"}


def _args(tiny_corpus_dir, root, name="run", **overrides):
    flags = {
        "corpus_dir": f"{tiny_corpus_dir}/train", "test_corpus_dir": f"{tiny_corpus_dir}/test",
        # In the test's folder: the flag's default is in the checkout.
        "feature_cache_dir": os.path.join(str(root), "features"),
        "model_size": "micro", "pruning": "structured", "total_rounds": 4,
        "clients_per_round": 2, "client_epochs": 1, "prune_begin_round": 1,
        "prune_end_round": 2, "prune_every_rounds": 1, "refine_rounds": 1,
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


def _worker_pid(proc):
    for child in psutil.Process(proc.pid).children(recursive=True):
        if any("worker_binary" in part for part in child.cmdline()):
            return child.pid
    raise AssertionError("the run has no TFF worker")


# LAMB on the server (Adam's moments and step count, and the trust ratio)
# with a warm-up + cosine server rate and an exponentially decaying client
# rate: their state and schedules must survive the resumes too.
OPTIMIZATION = dict(server_optimizer="lamb", server_learning_rate=0.01,
                    server_lr_schedule="warmup_cosine", server_lr_warmup_rounds=1,
                    client_lr_schedule="exponential", client_lr_decay_rate=0.5)


def test_killed_worker_and_killed_run_resume_to_the_same_result(tiny_corpus_dir, tmp_path,
                                                                 capsys):
    # The uninterrupted reference and the last resume run in this process
    # (`app.run(main)`); the killed runs are real command lines.
    ref = run_program_here(capsys, _args(tiny_corpus_dir, tmp_path, "reference",
                                         export_dir="none", **OPTIMIZATION)[2:])
    assert ref.returncode == 0, ref.stderr[-3000:]

    # 1. The TFF worker dies after round 1's checkpoint: the run ends at once
    # with one line naming it (exit 3), no hang, the checkpoint intact.
    root = tmp_path / "interrupted"
    run_dir = root / "run"
    # No export (test_cli and the extension test below check it): the run's
    # rounds, checkpoints and final model are what this test compares.
    args = _args(tiny_corpus_dir, root, checkpoint_every_rounds=1, export_dir="none",
                 **OPTIMIZATION)
    paused = PausedRun(args, 1, tmp_path)
    worker = _worker_pid(paused.proc)
    # The worker runs two client computations per core (--worker_concurrency=0).
    assert (f"--max_concurrent_computation_calls={2 * os.cpu_count()}"
            in psutil.Process(worker).cmdline())
    # Its inter-op pool has two threads per such call (its client loops run
    # their ops there; TensorFlow's default is one per core).
    assert psutil.Process(worker).environ()["TF_NUM_INTEROP_THREADS"] == str(4 * os.cpu_count())
    os.kill(worker, signal.SIGKILL)
    assert paused.resume_and_wait() == 3, paused.stderr()[-3000:]
    err = paused.stderr()
    lines = [l for l in err.splitlines() if l.startswith("run_experiment.py:")]
    assert len(lines) == 1 and "TFF worker pid" in lines[0] and "SIGKILL" in lines[0], err[-3000:]
    assert "Traceback" not in err
    assert (run_dir / "checkpoints" / "round_1").exists()
    assert not (run_dir / "summary.json").exists()

    # 2. Resumed, then the run itself is SIGKILLed (no cleanup at all) right
    # after round 2's checkpoint, leaving a half-written checkpoint behind.
    paused = PausedRun(args, 2, tmp_path)
    paused.kill()
    assert not (run_dir / "summary.json").exists()
    assert [r["round"] for r in _csv(run_dir / "metrics.csv")] == ["1", "2"]
    partial = run_dir / "checkpoints" / "round_3_temp1234"
    partial.mkdir(exist_ok=True)
    (partial / "saved_model.pb").write_bytes(b"truncated")

    # 3. Resumed to the end: the same rows and weights as the uninterrupted run.
    resumed = run_program_here(capsys, args[2:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref_dir = tmp_path / "reference"
    # The resumes crossed the switch to compact-model rounds (round 2, after
    # round 1's mask update) and resumed inside them (round 3).
    assert [r["client_model"] for r in _csv(ref_dir / "metrics.csv")] == [
        "masked", "compact", "compact", "compact"]
    # The rates each round ran at are the schedules' (3e-3 client Adam by
    # default): warm-up 0.01 / 2, then cosine over rounds 2-4.
    rows = _csv(ref_dir / "metrics.csv")
    assert [float(r["client_learning_rate"]) for r in rows] == pytest.approx(
        [3e-3 * 0.5 ** k for k in range(4)], rel=1e-6)
    assert [float(r["server_learning_rate"]) for r in rows] == pytest.approx(
        [0.005, 0.01, 0.0075, 0.0025], rel=1e-6)
    # FLOPs of the model clients trained: each compact model (sparsity rising
    # after rounds 1 and 2) costs less than the one before; the refinement
    # update after round 3 recomputes masks at the target, the same widths.
    flops = [int(r["client_step_flops"]) for r in rows]
    assert flops[0] > flops[1] > flops[2] == flops[3] > 0, flops
    # The owned worker's memory: each round's peak so far (never falling),
    # read before the first compact round for the dense phase, and at the end.
    with open(ref_dir / "metrics.csv") as f:
        peaks = [float(r["worker_peak_rss_bytes"]) for r in csv.DictReader(f)]
    assert peaks[0] > 0 and peaks == sorted(peaks), peaks
    workers = json.loads((ref_dir / "summary.json").read_text())["workers"]
    assert workers["concurrency"] == 2 * os.cpu_count()
    (address, dense_peak), = workers["peak_rss_bytes_dense_phase"].items()
    assert peaks[0] <= dense_peak <= peaks[1]  # read between rounds 1 and 2
    assert peaks[-1] <= workers["peak_rss_bytes"][address]
    for name in ("metrics.csv", "eval.csv"):
        expected, got = _csv(ref_dir / name), _csv(run_dir / name)
        assert [r["round"] for r in got] == [r["round"] for r in expected]
        assert got == expected, name
    expected, got = _weights(ref_dir), _weights(run_dir)
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_more_rounds_extend_other_settings_are_refused_and_export_errors_keep_the_model(
        tiny_corpus_dir, tmp_path, capsys):
    # In this process (`app.run(main)` as run_experiment.py calls it): the
    # command line itself is the kill-and-resume test's.
    run_dir = tmp_path / "run"
    one_round = dict(total_rounds=1, eval_every_rounds=1, prune_end_round=1,
                     refine_rounds=0, export_dir="none")
    first = run_program_here(capsys, _args(tiny_corpus_dir, tmp_path, **one_round)[2:])
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir / "keep.txt").write_text("results")

    # More rounds, another checkpoint and eval cadence: the run is extended
    # from its checkpoint. The export then fails (its base is a file): one
    # line, and the trained model stays.
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    extended = run_program_here(
        capsys, _args(tiny_corpus_dir, tmp_path, **{**one_round, "total_rounds": 2,
                                                    "checkpoint_every_rounds": 1,
                                                    "export_dir": blocker / "export"})[2:])
    assert extended.returncode != 0
    assert "Traceback" not in extended.stderr, extended.stderr[-3000:]
    errors = [l for l in extended.stderr.splitlines() if "error" in l]
    assert len(errors) == 1 and "export" in errors[0], extended.stderr[-3000:]
    assert [r["round"] for r in _csv(run_dir / "metrics.csv")] == ["1", "2"]
    assert (run_dir / "final_model" / "weights.index").exists()
    assert _weights(run_dir)

    second = run_program_here(
        capsys, _args(tiny_corpus_dir, tmp_path, **{**one_round, "total_rounds": 2},
                      target_sparsity=0.7)[2:])
    assert second.returncode == 2
    errors = [l for l in second.stderr.splitlines() if "error" in l]
    assert len(errors) == 1 and "target_sparsity" in errors[0] and "--overwrite" in errors[0]
    assert (run_dir / "keep.txt").read_text() == "results"  # nothing lost
    assert (run_dir / "summary.json").exists()
