"""A dead or unbindable TFF worker ends in one clear error, never a hang.

No check here depends on timing: the worker is killed only once a condition
is observed (the endless computation in flight on it and burning CPU), a
killed worker is reaped before the next call, and a hang is caught by a
bounded wait on the probe, which then dumps every thread's stack. Leftover
workers are looked for among this test's own child processes only, never by
port across the machine (other tests run in parallel).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import portpicker
import psutil
import pytest
import tensorflow_federated as tff

from tff_prune.runtime import owned as runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# How long the probe may take in all (TF import, a worker start, two
# computations) before it counts as hung; far above a normal run, only bounds
# a hang.
_PROBE_TIMEOUT_S = 240
# After SIGUSR1, how long faulthandler gets to write the hung probe's stacks.
_DUMP_TIMEOUT_S = 10

# Runs a real computation on the owned worker, SIGKILLs the worker (before the
# next invocation, or while an endless computation runs on it) and reports how
# the next invocation ended, in which phase the kill happened, and which
# worker_binary processes were still its own children afterwards.
_PROBE = textwrap.dedent("""
        import faulthandler, signal, sys
        # The parent sends SIGUSR1 to a hung probe: every thread's stack to stderr.
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)

        import os, threading, time
        import numpy as np
        import psutil
        import tensorflow as tf
        import tensorflow_federated as tff
        from tff_prune.runtime import owned as runtime

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

        # The RPCs that can carry a computation to the worker and block while
        # it runs (with this TFF, create_call blocks until the call is done).
        RUNNING_RPCS = ("create_call", "compute")
        # Worker CPU time, spent while such an RPC is in flight, that shows the
        # spin loop is running there (a plain call costs milliseconds).
        SPIN_CPU_S = 0.5
        POLL_S = 0.02

        print_lock = threading.Lock()

        def say(*parts):
            with print_lock:
                print(*parts, flush=True)

        def worker_children():
            # worker_binary processes among this probe's own children, live or
            # not yet reaped; never other processes on the machine.
            found = []
            for child in psutil.Process().children(recursive=True):
                try:
                    if child.name() == "worker_binary":
                        found.append((child.pid, child.status()))
                except psutil.NoSuchProcess:
                    pass
            return found

        def cpu_s(proc):
            times = proc.cpu_times()
            return times.user + times.system

        class MidRunKiller:
            # Wraps the worker's RPCs that run computations; SIGKILLs the worker
            # only while one of them is in flight and the worker has burnt
            # SPIN_CPU_S of CPU since it began.

            def __init__(self, worker):
                self.worker = worker
                self.lock = threading.Lock()
                self.in_flight = set()
                self.entered = threading.Event()
                self.killed_during = None  # RPCs in flight at the kill
                self.spin_cpu_s = None
                self.lost_in = []          # RPCs that then raised WorkerLostError
                for name in RUNNING_RPCS:
                    self._watch(name)
                self.thread = threading.Thread(target=self._kill, daemon=True)
                self.thread.start()

            def _watch(self, name):
                real = getattr(self.worker.stub, name)

                def call(request):
                    with self.lock:
                        self.in_flight.add(name)
                    self.entered.set()
                    try:
                        return real(request)
                    except runtime.WorkerLostError:
                        with self.lock:
                            self.lost_in.append(name)
                        raise
                    finally:
                        with self.lock:
                            self.in_flight.discard(name)

                # RemoteExecutor calls the methods of this very stub object.
                setattr(self.worker.stub, name, call)

            def _kill(self):
                self.entered.wait()
                proc = psutil.Process(self.worker.pid)
                start = cpu_s(proc)
                while True:
                    with self.lock:
                        # Under the lock: the RPC cannot finish before the kill.
                        spent = cpu_s(proc) - start
                        if self.in_flight and spent >= SPIN_CPU_S:
                            self.killed_during = sorted(self.in_flight)
                            self.spin_cpu_s = spent
                            os.kill(self.worker.pid, signal.SIGKILL)
                            return
                    time.sleep(POLL_S)

            def phase(self):
                with self.lock:
                    if self.killed_during is None:
                        return "NOT_KILLED_BY_PROBE"
                    if set(self.lost_in) & set(self.killed_during):
                        return "KILLED_DURING_COMPUTATION"
                    return "KILLED_BUT_NO_RPC_IN_FLIGHT_FAILED"

        mode, log_dir = sys.argv[1], sys.argv[2]
        with runtime.local_runtime(log_dir=log_dir) as rt:
            print("RESULT", float(sum_plus_one([1.0, 2.0])), flush=True)
            worker = rt.workers[0]
            pid = rt.worker_pids[0]
            print("WORKERS", pid, flush=True)
            killer = None
            if mode == "between":
                os.kill(pid, signal.SIGKILL)
                worker.process.wait()  # reaped: dead for sure before the call
                comp = sum_plus_one
            else:
                killer = MidRunKiller(worker)
                comp = spin
            try:
                comp([1.0, 2.0])
                say("NO ERROR")
            except runtime.WorkerLostError as e:
                say("LOST", str(e).replace(chr(10), "<NL>"))
            if killer is None:
                say("PHASE", "KILLED_BETWEEN_COMPUTATIONS")
            else:
                say("PHASE", killer.phase())
                say("KILL_INFO", killer.killed_during, killer.lost_in,
                    killer.spin_cpu_s)
            # The lost worker is reaped and none was started behind our back.
            say("WORKER_CHILDREN_AFTER_LOSS", worker_children())
        say("EXITED")
        say("WORKER_CHILDREN_AT_EXIT", worker_children())
""")


def _probe_failure(what: str, out: str, err: str) -> str:
    return f"{what}\n--- probe stdout ---\n{out}\n--- probe stderr (tail) ---\n{err[-8000:]}"


def _run_probe(tmp_path, mode: str):
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    log_dir = tmp_path / "logs"
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1",
               TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, str(script), mode, str(log_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        out, err = proc.communicate(timeout=_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # Our own child only; its worker dies with it (PDEATHSIG). First every
        # thread's stack (faulthandler in the probe), then SIGKILL.
        proc.send_signal(signal.SIGUSR1)
        try:
            proc.communicate(timeout=_DUMP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        proc.kill()
        out, err = proc.communicate()  # nothing read so far is lost
        pytest.fail(_probe_failure(
            f"probe ({mode}) hung for {_PROBE_TIMEOUT_S}s; thread stacks in stderr",
            out, err))
    return proc.returncode, out, err, log_dir


def _line(out: str, key: str):
    match = re.search(rf"^{key} (.*)$", out, re.M)
    return match.group(1) if match else None


@pytest.mark.parametrize("mode,phase", [
        # killed and reaped after one round, before the next
        ("between", "KILLED_BETWEEN_COMPUTATIONS"),
        # killed while the endless computation runs on it
        ("mid", "KILLED_DURING_COMPUTATION"),
])
def test_killed_worker_raises_worker_lost_error(tmp_path, mode, phase):
    returncode, out, err, log_dir = _run_probe(tmp_path, mode)
    fail = lambda what: _probe_failure(what, out, err)  # noqa: E731
    assert "RESULT 5.0" in out, fail("first computation did not run")
    pid = int(_line(out, "WORKERS"))
    message = _line(out, "LOST")
    assert message is not None, fail("no WorkerLostError")
    assert _line(out, "PHASE") == phase, fail(f"worker not killed in phase {phase}")
    assert "<NL>" not in message  # one line
    assert f"pid {pid}" in message, message
    port = re.search(r"port (\d+)", message)
    assert port and int(port.group(1)) > 0, message
    assert "SIGKILL" in message, message
    assert str(log_dir / "tff_worker.log") in message, message
    assert "EXITED" in out and returncode == 0, fail(f"probe exit code {returncode}")
    # No worker left (or restarted behind our back), among the probe's own
    # children: neither after the loss nor when the runtime has exited.
    assert _line(out, "WORKER_CHILDREN_AFTER_LOSS") == "[]", fail("worker left after loss")
    assert _line(out, "WORKER_CHILDREN_AT_EXIT") == "[]", fail("worker left at exit")


def _worker_children() -> dict:
    """This process's own worker_binary children (live or unreaped): pid ->
    (create time, status)."""
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == "worker_binary":
                found[child.pid] = (child.create_time(), child.status())
        except psutil.NoSuchProcess:
            pass
    return found


def _new_worker_children(before: dict) -> dict:
    """Worker children that were not there at `before` (same pid and start)."""
    return {pid: info for pid, info in _worker_children().items()
            if before.get(pid, (None,))[0] != info[0]}


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
    before = _worker_children()
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
            # The one on the taken port is gone; only the serving one is left.
            assert set(_new_worker_children(before)) == {worker.pid}
    finally:
        squatter.close()
    # Both workers (the one that could not bind and the serving one) are gone
    # and reaped.
    assert not _new_worker_children(before)


def test_port_never_free_gives_one_clear_error(tmp_path, monkeypatch):
    before = _worker_children()
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
    # None of the attempts left a worker behind (live or unreaped).
    assert not _new_worker_children(before)
