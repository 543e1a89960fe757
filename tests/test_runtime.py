"""The owned TFF runtime leaves no worker_binary behind, however it ends."""

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs a real federated computation on the real C++ worker, prints the worker
# PIDs, then ends the way argv[1] says.
_PROBE = textwrap.dedent("""
        import faulthandler, signal
        # A hung probe dumps every thread's stack when the test sends SIGUSR1.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        # SIGINT must raise KeyboardInterrupt whatever this process inherited
        # (a shell's background job starts with SIGINT ignored).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import sys, time
        import numpy as np
        import tensorflow as tf
        import tensorflow_federated as tff
        from tff_prune.runtime import owned as runtime

        @tff.tensorflow.computation(np.float32)
        def add_one(x):
            return x + 1.0

        @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
        def sum_plus_one(values):
            return tff.federated_sum(tff.federated_map(add_one, values))

        mode = sys.argv[1]
        with runtime.local_runtime(log_dir=sys.argv[2]) as rt:
            result = sum_plus_one([1.0, 2.0, 3.0])
            print("RESULT", float(result), flush=True)
            print("WORKERS", " ".join(map(str, rt.worker_pids)), flush=True)
            if mode == "exception":
                raise ValueError("boom")
            if mode in ("sigint", "sigterm", "sigkill"):
                print("WAITING", flush=True)
                while True:
                    time.sleep(0.1)
        print("CLEAN EXIT", flush=True)
""")


def _alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


_PROBE_TIMEOUT_S = 120


def _stop_hung(proc: subprocess.Popen, stderr_path, what: str) -> None:
    """Fails the test with every thread's stack of a hung probe, which is
    killed (its workers die with it: PDEATHSIG)."""
    proc.send_signal(signal.SIGUSR1)  # faulthandler: all threads' stacks to stderr
    try:
        proc.wait(timeout=5)  # a probe that was only slow may still exit
    except subprocess.TimeoutExpired:
        pass
    proc.kill()
    proc.wait()
    pytest.fail(f"the probe hung {what}; its stderr with every thread's stack:\n"
                f"{stderr_path.read_text()[-8000:]}")


def _run_probe(tmp_path, mode):
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1",
               TF_CPP_MIN_LOG_LEVEL="3")
    stderr_path = tmp_path / "probe.stderr"
    with open(stderr_path, "w") as stderr_file:  # a file: never a full pipe
        proc = subprocess.Popen(
                [sys.executable, str(script), mode, str(tmp_path / "logs")],
                stdout=subprocess.PIPE, stderr=stderr_file, text=True, env=env)
    # Lines are read in a thread, so the deadline holds while none arrives.
    lines: "queue.Queue[str]" = queue.Queue()
    def read_lines():
        for line in proc.stdout:
            lines.put(line)
        lines.put("")  # end of output

    reader = threading.Thread(target=read_lines, daemon=True)
    reader.start()
    seen = []
    worker_pids = []
    deadline = time.monotonic() + _PROBE_TIMEOUT_S
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            _stop_hung(proc, stderr_path, "before it was ready")
        seen.append(line)
        if line.startswith("WORKERS"):
            worker_pids = [int(p) for p in line.split()[1:]]
            for pid in worker_pids:
                # The PID really is a TFF worker that this probe started.
                assert "worker_binary" in " ".join(psutil.Process(pid).cmdline())
                assert _alive(pid)
        if not line or line.startswith(("WAITING", "CLEAN")):
            break
    if mode == "sigint":
        proc.send_signal(signal.SIGINT)
    elif mode == "sigterm":
        proc.send_signal(signal.SIGTERM)
    elif mode == "sigkill":
        proc.send_signal(signal.SIGKILL)
    try:
        proc.wait(timeout=_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _stop_hung(proc, stderr_path, f"at exit ({mode})")
    reader.join()
    while not lines.empty():
        seen.append(lines.get())
    stderr = stderr_path.read_text()
    return proc.returncode, "".join(seen), stderr, worker_pids


def _assert_no_orphans(worker_pids):
    assert worker_pids, "probe never reported its workers"
    deadline = time.monotonic() + 5  # the kernel's PDEATHSIG is asynchronous
    while any(_alive(p) for p in worker_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in worker_pids if _alive(p)]


@pytest.mark.parametrize("mode,expected_rc", [
        ("normal", 0),
        ("exception", 1),
        ("sigint", -signal.SIGINT),  # KeyboardInterrupt: Python re-raises SIGINT
        ("sigterm", 128 + 15),     # TerminatedBySignal(SIGTERM)
        ("sigkill", -signal.SIGKILL),  # no Python code runs: PDEATHSIG must act
])
def test_no_worker_survives(tmp_path, mode, expected_rc):
    rc, out, err, worker_pids = _run_probe(tmp_path, mode)
    assert "RESULT 9.0" in out, err[-3000:]
    assert rc == expected_rc, err[-3000:]
    _assert_no_orphans(worker_pids)
    if mode == "normal":
        assert "CLEAN EXIT" in out
    if mode == "exception":
        assert "ValueError: boom" in err


def test_worker_output_goes_to_log_not_stdout(tmp_path):
    rc, out, err, _ = _run_probe(tmp_path, "normal")
    assert rc == 0
    log = tmp_path / "logs" / "tff_worker.log"
    assert log.exists()
    # The worker announces its port in its log; none of that reaches stdout.
    assert "worker" not in out.lower().replace("workers", "")


def test_computation_outside_runtime_fails_loudly(tmp_path):
    script = tmp_path / "outside.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        import psutil
        import tensorflow_federated as tff
        from tff_prune.runtime import owned as runtime
        @tff.tensorflow.computation(np.float32)
        def f(x):
            return x
        try:
            f(1.0)
        except runtime.RuntimeNotStartedError as e:
            print("REFUSED", e)
        # TFF's own default context would have started a worker by now.
        print("CHILDREN", len(psutil.Process().children(recursive=True)))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=REPO),
                         timeout=120)
    assert "REFUSED no TFF runtime is running" in out.stdout, out.stderr[-2000:]
    assert "CHILDREN 0" in out.stdout


def test_worker_environment_sizes_the_inter_op_pool_per_call_and_keeps_a_users_value():
    from tff_prune.runtime import worker_binary
    assert worker_binary.worker_environment(4, base={"A": "1"}) == {
        "A": "1", "TF_NUM_INTEROP_THREADS": "8"}
    # No limit: counted as two calls per core.
    assert worker_binary.worker_environment(-1, base={})["TF_NUM_INTEROP_THREADS"] == str(
        4 * os.cpu_count())
    assert worker_binary.worker_environment(4, base={"TF_NUM_INTEROP_THREADS": "3"}) == {
        "TF_NUM_INTEROP_THREADS": "3"}
