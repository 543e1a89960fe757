"""The cohort split across TFF workers that someone else runs (``--workers``).

Workers are real ``python -m tff_prune.worker`` processes (TFF's C++ worker
binary) on loopback ports, sharing the controller's feature cache folder as a
shared volume would; clients build their datasets from speaker ids inside
them. Runs are real ``run_experiment.py`` subprocesses on the tiny corpus.
"""

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import portpicker
import psutil
import pytest
import tensorflow as tf

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


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("localhost", port)) == 0


class _Worker:
    """One ``python -m tff_prune.worker`` on a loopback port."""

    def __init__(self, features: str, log_path: str, port: int = 0):
        self.port = port or portpicker.pick_unused_port()
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tff_prune.worker", f"--port={self.port}",
             f"--feature_cache_dir={features}"],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=REPO))
        deadline = time.monotonic() + 60
        while not _listening(self.port):
            assert self.proc.poll() is None, open(log_path).read()[-2000:]
            assert time.monotonic() < deadline, "worker never listened"
            time.sleep(0.1)

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """The feature cache the controller and both workers share."""
    return str(tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="module")
def one_worker_run(tiny_corpus_dir, features, tmp_path_factory):
    """The reference: the same run on one owned local worker."""
    root = tmp_path_factory.mktemp("one_worker")
    done = subprocess.run(_args(tiny_corpus_dir, root, features, "run"),
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run"


def _no_worker_on(addresses) -> None:
    """No TFF worker process serves any of `addresses` (ours, owned or not)."""
    ports = {f"--port={a.rsplit(':', 1)[1]}" for a in addresses}
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if (any("worker_binary" in a for a in cmdline) and ports & set(cmdline)
                and proc.status() != psutil.STATUS_ZOMBIE):
            left.append(proc.pid)
    assert not left, f"worker processes left running: {left}"


def test_cohort_split_across_two_workers_equals_one_worker(
        tiny_corpus_dir, features, one_worker_run, tmp_path):
    workers = [_Worker(features, str(tmp_path / f"worker{i}.log")) for i in range(2)]
    try:
        done = subprocess.run(
            _args(tiny_corpus_dir, tmp_path, features, "run",
                  workers=",".join(w.address for w in workers)),
            capture_output=True, text=True, timeout=600, cwd=REPO)
        assert done.returncode == 0, done.stderr[-3000:]
        # Both workers are still serving: the run does not stop what it does not own.
        assert all(w.proc.poll() is None for w in workers)
    finally:
        for w in workers:
            w.kill()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # The reference run built the feature cache; this one decoded no audio.
    cache = summary["task"]["feature_cache"]
    assert cache["train"]["files_decoded"] == cache["test"]["files_decoded"] == 0
    assert cache["train"]["speakers_reused"] == 4
    assert summary["workers"]["remote"] and summary["workers"]["client_data"] == "ids"
    counts = summary["workers"]["computations"]
    assert set(counts) == {w.address for w in workers}
    # Each worker ran its half of every round's cohort (and of the evaluation).
    assert all(n > 0 for n in counts.values()), counts
    split, reference = _weights(tmp_path / "run"), _weights(one_worker_run)
    assert split.keys() == reference.keys()
    for name in reference:
        np.testing.assert_allclose(split[name], reference[name], atol=1e-5, err_msg=name)
    # Training moved the weights: the comparison is not between two initial models.
    initial = json.loads((one_worker_run / "summary.json").read_text())
    assert initial["final"]["sparsity"] > 0.2
    _no_worker_on(counts)


def test_two_local_workers_split_the_cohort(tiny_corpus_dir, features, one_worker_run,
                                            tmp_path):
    done = subprocess.run(_args(tiny_corpus_dir, tmp_path, features, "run", local_workers=2),
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    counts = summary["workers"]["computations"]
    assert len(counts) == 2 and all(n > 0 for n in counts.values()), counts
    assert all(rss and rss > 0 for rss in summary["workers"]["peak_rss_bytes"].values())
    split, reference = _weights(tmp_path / "run"), _weights(one_worker_run)
    for name in reference:
        np.testing.assert_allclose(split[name], reference[name], atol=1e-5, err_msg=name)
    _no_worker_on(counts)  # the owned workers stopped with the run


def test_unreachable_worker_fails_fast_with_one_line(tiny_corpus_dir, features, tmp_path):
    address = f"localhost:{portpicker.pick_unused_port()}"
    start = time.monotonic()
    done = subprocess.run(_args(tiny_corpus_dir, tmp_path, features, "run", workers=address),
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    elapsed = time.monotonic() - start
    assert done.returncode == 2
    errors = [l for l in done.stderr.splitlines() if "error" in l]
    assert len(errors) == 1 and address in errors[0] and "unreachable" in errors[0], \
        done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert elapsed < 60
    assert not (tmp_path / "run").exists()  # nothing written for a run that never started


def test_worker_without_the_feature_cache_is_one_line(tiny_corpus_dir, features,
                                                     one_worker_run, tmp_path):
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    worker = _Worker(str(empty), str(tmp_path / "worker.log"))
    try:
        done = subprocess.run(_args(tiny_corpus_dir, tmp_path, features, "run",
                                    workers=worker.address),
                              capture_output=True, text=True, timeout=600, cwd=REPO)
    finally:
        worker.kill()
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [l for l in done.stderr.splitlines() if "error" in l]
    assert len(errors) == 1 and worker.address in errors[0] and "cannot read" in errors[0]
    assert ".tfrecord" in errors[0] and "--feature_cache_dir" in errors[0]
    assert "Traceback" not in done.stderr
    assert (tmp_path / "run" / "config.json").exists()  # the run stays resumable


def test_malformed_workers_flag_is_one_line(tiny_corpus_dir, features, tmp_path):
    done = subprocess.run(_args(tiny_corpus_dir, tmp_path, features, "run",
                                workers="localhost"),
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2
    assert "--workers: 'localhost' is not host:port" in done.stderr
    assert "Traceback" not in done.stderr


def test_killed_worker_ends_the_run_and_a_rerun_resumes(
        tiny_corpus_dir, features, one_worker_run, tmp_path):
    logs = [str(tmp_path / f"worker{i}.log") for i in range(2)]
    workers = [_Worker(features, log) for log in logs]
    args = _args(tiny_corpus_dir, tmp_path, features, "run",
                 workers=",".join(w.address for w in workers), worker_lost_after_s=3)
    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=REPO)
        checkpoint = tmp_path / "run" / "checkpoints" / "round_1"
        deadline = time.monotonic() + 600
        while not checkpoint.exists() and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert checkpoint.exists(), proc.communicate()[1][-3000:]
        # The controller is held while the worker dies, so round 2 cannot
        # finish first: it meets a dead worker, wherever it stood.
        os.kill(proc.pid, signal.SIGSTOP)
        lost = workers[1]
        lost.kill()
        killed_at = time.monotonic()
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=300)
        ended_after = time.monotonic() - killed_at
        assert proc.returncode == 3, err[-3000:]
        errors = [l for l in err.splitlines() if "error" in l]
        assert len(errors) == 1 and lost.address in errors[0], err[-3000:]
        assert "resume" in errors[0] and "Traceback" not in err
        assert ended_after < 90  # bounded retries (3 s), not TFF's endless loop
        # The worker comes back (a restarted pod); the same command resumes.
        workers[1] = _Worker(features, logs[1], port=lost.port)
        done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=REPO)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        for w in workers:
            w.kill()
    with open(tmp_path / "run" / "metrics.csv") as f:
        rounds = [int(row["round"]) for row in csv.DictReader(f)]
    assert rounds == [1, 2]  # round 1 from the checkpoint, round 2 once
    resumed, reference = _weights(tmp_path / "run"), _weights(one_worker_run)
    for name in reference:
        np.testing.assert_allclose(resumed[name], reference[name], atol=1e-5, err_msg=name)
    assert re.search(r"lost mid-run", errors[0])
    _no_worker_on([w.address for w in workers])
