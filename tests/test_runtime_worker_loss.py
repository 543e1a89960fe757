"""A dead or unbindable TFF worker ends in one clear error, never a hang."""

import os
import re
import socket
import subprocess
import sys
import textwrap

import numpy as np
import portpicker
import psutil
import pytest
import tensorflow_federated as tff

from tff_prune import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs a real computation on the owned worker, SIGKILLs the worker (before the
# next invocation, or while an endless computation runs on it) and reports how
# the next invocation ended. A hang is caught by the parent's timeout.
_PROBE = textwrap.dedent("""
        import os, signal, sys, threading, time
        import numpy as np
        import tensorflow as tf
        import tensorflow_federated as tff
        from tff_prune import runtime

        @tff.tensorflow.computation(np.float32)
        def add_one(x):
            return x + 1.0

        @tff.tensorflow.computation(np.float32)
        def spin_forever(x):
            # float32 stops growing at 2**24: the loop never ends by itself.
            return tf.while_loop(lambda v: v > -1.0, lambda v: v + 1.0, [x])[0]

        @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
        def sum_plus_one(values):
            return tff.federated_sum(tff.federated_map(add_one, values))

        @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
        def spin(values):
            return tff.federated_sum(tff.federated_map(spin_forever, values))

        mode, log_dir = sys.argv[1], sys.argv[2]
        with runtime.local_runtime(log_dir=log_dir) as rt:
            print("RESULT", float(sum_plus_one([1.0, 2.0])), flush=True)
            pid = rt.worker_pids[0]
            print("WORKERS", pid, flush=True)
            if mode == "between":
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.5)
                comp = sum_plus_one
            else:
                threading.Timer(2.0, os.kill, (pid, signal.SIGKILL)).start()
                comp = spin
            start = time.monotonic()
            try:
                comp([1.0, 2.0])
                print("NO ERROR", flush=True)
            except runtime.WorkerLostError as e:
                print(f"ELAPSED {time.monotonic() - start:.1f}", flush=True)
                print("LOST", str(e).replace(chr(10), "<NL>"), flush=True)
        print("EXITED", flush=True)
""")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("mode,max_elapsed_s", [
        ("between", 5.0),  # killed after one round, before the next
        ("mid", 10.0),     # killed while a computation runs on it (2 s in)
])
def test_killed_worker_raises_worker_lost_error(tmp_path, mode, max_elapsed_s):
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    log_dir = tmp_path / "logs"
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1",
               TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, str(script), mode, str(log_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child only; its worker dies with it (PDEATHSIG)
        out, err = proc.communicate()
        pytest.fail(f"run hung after the worker was killed:\n{out}\n{err[-3000:]}")
    assert "RESULT 5.0" in out, err[-3000:]
    pid = int(re.search(r"^WORKERS (\d+)$", out, re.M).group(1))
    lost = re.search(r"^LOST (.*)$", out, re.M)
    assert lost, f"no WorkerLostError:\n{out}\n{err[-3000:]}"
    message = lost.group(1)
    assert "<NL>" not in message  # one line
    assert f"pid {pid}" in message
    port = int(re.search(r"port (\d+)", message).group(1))
    assert "SIGKILL" in message
    assert str(log_dir / "tff_worker.log") in message
    elapsed = float(re.search(r"^ELAPSED ([\d.]+)$", out, re.M).group(1))
    assert elapsed < max_elapsed_s
    assert "EXITED" in out and proc.returncode == 0, err[-3000:]
    # No worker is left on that port (none restarted behind our back).
    assert not _worker_processes_on(port)


def _worker_processes_on(port: int) -> list:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if (any("worker_binary" in a for a in cmdline) and
                f"--port={port}" in cmdline and _alive(proc.pid)):
            found.append(proc.pid)
    return found


@tff.tensorflow.computation(np.float32)
def _add_one(x):
    return x + 1.0


@tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
def _sum_plus_one(values):
    return tff.federated_sum(tff.federated_map(_add_one, values))


def _listening_socket() -> socket.socket:
    """A socket listening on a free wildcard port, like another server's."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.bind(("::", 0))
    except OSError:  # no IPv6 here: the worker binds 0.0.0.0 instead
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("0.0.0.0", 0))
    sock.listen()
    return sock


@pytest.mark.timeout(120)  # a runtime talking to the squatter would hang
def test_taken_port_is_retried_with_another(tmp_path, monkeypatch):
    # Something else listens on the first port portpicker hands out, as when
    # another program binds it between the pick and the worker's own bind.
    squatter = _listening_socket()
    taken = squatter.getsockname()[1]
    real_pick = portpicker.pick_unused_port
    picked = []

    def pick_taken_first():
        port = taken if not picked else real_pick()
        picked.append(port)
        return port

    monkeypatch.setattr(portpicker, "pick_unused_port", pick_taken_first)
    try:
        with runtime.local_runtime(log_dir=str(tmp_path)) as rt:
            worker = rt.workers[0]
            assert picked[0] == taken and worker.port != taken
            assert float(_sum_plus_one([1.0, 2.0, 3.0])) == 9.0
            pid = worker.pid
    finally:
        squatter.close()
    assert not _alive(pid)


def test_port_never_free_gives_one_clear_error(tmp_path, monkeypatch):
    squatter = _listening_socket()
    taken = squatter.getsockname()[1]
    monkeypatch.setattr(portpicker, "pick_unused_port", lambda: taken)
    try:
        with pytest.raises(runtime.WorkerStartError) as info:
            with runtime.local_runtime(log_dir=str(tmp_path)):
                pass
    finally:
        squatter.close()
    message = str(info.value)
    assert "\n" not in message
    assert f"port {taken}" in message and "gave up after" in message
    assert str(tmp_path / "tff_worker.log") in message
    assert not _worker_processes_on(taken)
