"""The cohort split across TFF workers that someone else runs (``--workers``).

Workers are real ``python -m tff_prune.worker`` processes (TFF's C++ worker
binary) on loopback ports, sharing the controller's feature cache folder as a
shared volume would; clients build their datasets from speaker ids inside
them. Runs are ``run_experiment.py``'s program on the tiny corpus: a real
subprocess where a run is killed, in this process (``app.run(main)``) where not.
"""

import csv
import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import portpicker
import psutil
import pytest
import tensorflow as tf

from conftest import PausedRun
from conftest import build_once
from conftest import run_program_here
from conftest import shell_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _args(tiny_corpus_dir, root, features, name, **overrides):
    flags = {
        "corpus_dir": f"{tiny_corpus_dir}/train", "test_corpus_dir": f"{tiny_corpus_dir}/test",
        "feature_cache_dir": features, "model_size": "micro", "pruning": "structured",
        "total_rounds": 2, "clients_per_round": 4, "client_epochs": 1,
        "prune_begin_round": 1, "prune_end_round": 2, "prune_every_rounds": 1,
        "refine_rounds": 0, "eval_every_rounds": 2, "checkpoint_every_rounds": 1,
        "progress": "off", "export_dir": "none", "root_output_dir": root,
        "experiment_name": name}
    flags.update(overrides)
    return [sys.executable, os.path.join(REPO, "run_experiment.py"),
            *[f"--{k}={v}" for k, v in flags.items()]]


def _weights(run_dir):
    reader = tf.train.load_checkpoint(os.path.join(run_dir, "final_model", "weights"))
    tensors = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
               if "OPTIMIZER" not in k}
    # The model's variables (not the checkpoint's own object-graph string).
    return {k: v for k, v in tensors.items()
            if isinstance(v, np.ndarray) and v.dtype.kind in "fiu"}


def _listens(proc: subprocess.Popen, port: int) -> bool:
    """Whether *this* process (not someone else) listens on `port`."""
    try:
        conns = psutil.Process(proc.pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns)


class _Worker:
    """One ``python -m tff_prune.worker`` on a loopback port.

    A port portpicker chose can be taken by another program before the
    worker binds it: the worker then exits at once, and is started again on
    another port (unless the port is given: a restarted worker keeps its
    address)."""

    _ATTEMPTS = 4

    def __init__(self, features: str, log_path: str, port: int = 0):
        self.log = open(log_path, "ab")
        for _ in range(self._ATTEMPTS):
            self.port = port or portpicker.pick_unused_port()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tff_prune.worker", f"--port={self.port}",
                 f"--feature_cache_dir={features}"],
                cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                env=shell_env(PYTHONPATH=REPO))
            if self._wait_listening():
                return
        raise AssertionError(f"no worker could listen: {open(log_path).read()[-2000:]}")

    def _wait_listening(self, timeout_s: float = 120) -> bool:
        deadline = time.monotonic() + timeout_s
        while not _listens(self.proc, self.port):
            if self.proc.poll() is not None:
                return False  # its port was taken: try another
            assert time.monotonic() < deadline, "worker never listened"
            time.sleep(0.1)  # polling the condition, not standing in for it
        return True

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def features(shared_dir):
    """The feature cache the controller and the workers share (both xdist
    workers' tests: the reference run fills it)."""
    path = shared_dir / "distributed_features"
    path.mkdir(exist_ok=True)
    return str(path)


@pytest.fixture(scope="module")
def one_worker_run(tiny_corpus_dir, features, shared_dir):
    """The reference: the same run on one owned local worker (run once per
    session, whichever xdist worker needs it first)."""
    def build(root):
        # In this process: the command line is the kill-and-resume test's.
        done = run_program_here(None, _args(tiny_corpus_dir, root, features, "run")[2:])
        assert done.returncode == 0

    return build_once(shared_dir, "distributed_one_worker", build) / "run"


def _no_worker_left(summary: dict, workers=()) -> None:
    """The run's owned workers (pids in its summary) and our remote ones
    are gone; only processes of this test are looked at."""
    left = [pid for pid in summary["workers"]["owned_pids"] if _is_worker(pid)]
    left += [w.proc.pid for w in workers if w.proc.poll() is None]
    assert not left, f"worker processes left running: {left}"


def _is_worker(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return (proc.status() != psutil.STATUS_ZOMBIE
                and any("worker_binary" in a for a in proc.cmdline()))
    except psutil.Error:
        return False


def _killed_run(args, tmp_path, lost):
    """Runs `args` to round 1's checkpoint, where the run stops itself
    (`PausedRun`), kills worker `lost` meanwhile, and returns how the
    resumed run ended: (exit code, stderr)."""
    paused = PausedRun(args, 1, tmp_path)
    try:
        # Round 2 cannot start before the worker is dead: it meets a dead
        # worker, wherever it stands.
        lost.kill()
        # Bounded retries (3 s) end it; a hang is caught by the timeout.
        return paused.resume_and_wait(), paused.stderr()
    finally:
        paused.kill()


def test_killed_remote_worker_ends_the_run_and_a_rerun_splits_the_cohort_like_one_worker(
        tiny_corpus_dir, features, one_worker_run, tmp_path, capsys):
    """Two remote workers: one dies after round 1's checkpoint (one line,
    exit 3); it comes back on its address and the same command resumes; the
    resumed run splits each round's cohort across both and ends with the
    one-worker run's weights."""
    logs = [str(tmp_path / f"worker{i}.log") for i in range(2)]
    workers = [_Worker(features, log) for log in logs]
    args = _args(tiny_corpus_dir, tmp_path, features, "run",
                 workers=",".join(w.address for w in workers), worker_lost_after_s=3)
    try:
        # The worker program became worker_binary (same pid) with an inter-op
        # pool of two threads per call it runs at once (no limit: two per core).
        env = psutil.Process(workers[0].proc.pid).environ()
        assert env["TF_NUM_INTEROP_THREADS"] == str(4 * os.cpu_count()), env
        lost = workers[1]
        code, err = _killed_run(args, tmp_path, lost)
        assert code == 3, err[-3000:]
        errors = [l for l in err.splitlines() if "error" in l]
        assert len(errors) == 1 and lost.address in errors[0], err[-3000:]
        assert "resume" in errors[0] and "Traceback" not in err
        assert re.search(r"lost mid-run", errors[0])
        # The worker comes back (a restarted pod); the same command resumes
        # (in this process: the paused run above was the command line).
        workers[1] = _Worker(features, logs[1], port=lost.port)
        done = run_program_here(capsys, args[2:])
        assert done.returncode == 0, done.stderr[-3000:]
        # Both workers are still serving: the run does not stop what it does not own.
        assert all(w.proc.poll() is None for w in workers)
    finally:
        for w in workers:
            w.kill()
    with open(tmp_path / "run" / "metrics.csv") as f:
        rounds = [int(row["round"]) for row in csv.DictReader(f)]
    assert rounds == [1, 2]  # round 1 from the checkpoint, round 2 once
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # The reference run built the feature cache; this one decoded no audio.
    cache = summary["task"]["feature_cache"]
    assert cache["train"]["files_decoded"] == cache["test"]["files_decoded"] == 0
    assert cache["train"]["speakers_reused"] == 4
    assert summary["workers"]["remote"] and summary["workers"]["client_data"] == "ids"
    assert summary["workers"]["owned_pids"] == []
    counts = summary["workers"]["computations"]
    assert set(counts) == {w.address for w in workers}
    # Each worker ran its half of round 2's cohort (and of the evaluation).
    assert all(n > 0 for n in counts.values()), counts
    split, reference = _weights(tmp_path / "run"), _weights(one_worker_run)
    assert split.keys() == reference.keys()
    for name in reference:
        np.testing.assert_allclose(split[name], reference[name], atol=1e-5, err_msg=name)
    # Training moved the weights: the comparison is not between two initial models.
    initial = json.loads((one_worker_run / "summary.json").read_text())
    assert initial["final"]["sparsity"] > 0.4
    _no_worker_left(summary, workers)


def test_two_local_workers_split_the_cohort(tiny_corpus_dir, features, one_worker_run,
                                            tmp_path, capsys):
    done = run_program_here(capsys, _args(tiny_corpus_dir, tmp_path, features, "run",
                                          local_workers=2)[2:])
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    counts = summary["workers"]["computations"]
    assert len(counts) == 2 and all(n > 0 for n in counts.values()), counts
    assert len(summary["workers"]["owned_pids"]) == 2
    assert all(rss and rss > 0 for rss in summary["workers"]["peak_rss_bytes"].values())
    split, reference = _weights(tmp_path / "run"), _weights(one_worker_run)
    for name in reference:
        np.testing.assert_allclose(split[name], reference[name], atol=1e-5, err_msg=name)
    _no_worker_left(summary)  # the owned workers stopped with the run


def test_unreachable_worker_fails_fast_with_one_line(tiny_corpus_dir, features, tmp_path,
                                                     capsys):
    # An address nothing listens on: a port this test holds bound but not listening.
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        address = f"localhost:{sock.getsockname()[1]}"
        done = run_program_here(capsys, _args(tiny_corpus_dir, tmp_path, features, "run",
                                              workers=address)[2:])
    assert done.returncode == 2
    errors = [l for l in done.stderr.splitlines() if "error" in l]
    assert len(errors) == 1 and address in errors[0] and "unreachable" in errors[0], \
        done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()  # nothing written for a run that never started


def test_worker_without_the_feature_cache_is_one_line(tiny_corpus_dir, features,
                                                     one_worker_run, tmp_path, capsys):
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    worker = _Worker(str(empty), str(tmp_path / "worker.log"))
    try:
        done = run_program_here(capsys, _args(tiny_corpus_dir, tmp_path, features, "run",
                                              workers=worker.address)[2:])
    finally:
        worker.kill()
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [l for l in done.stderr.splitlines() if "error" in l]
    assert len(errors) == 1 and worker.address in errors[0] and "cannot read" in errors[0]
    assert ".tfrecord" in errors[0] and "--feature_cache_dir" in errors[0]
    assert "Traceback" not in done.stderr
    assert (tmp_path / "run" / "config.json").exists()  # the run stays resumable


def test_malformed_workers_flag_is_one_line(tiny_corpus_dir, features, tmp_path, capsys):
    done = run_program_here(capsys, _args(tiny_corpus_dir, tmp_path, features, "run",
                                          workers="localhost")[2:])
    assert done.returncode == 2
    assert "--workers: 'localhost' is not host:port" in done.stderr
    assert "Traceback" not in done.stderr
