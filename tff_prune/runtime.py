"""An owned TFF runtime: C++ workers that never outlive the program.

`import tensorflow_federated` installs a default context whose C++
`worker_binary` is started lazily with the parent's stdout and stderr and is
only stopped from a `__del__`. An orphaned worker keeps the parent's pipes
open, so a test run or CI step that reads them hangs. `local_runtime()` owns
the whole life cycle instead:

* each worker is started by us, with its output sent to a log file;
* each worker is tied to this process with `PR_SET_PDEATHSIG`, so the kernel
    kills it even when this process dies by SIGKILL and no Python code runs;
* SIGTERM is turned into an exception (like SIGINT already is), so `finally`
    blocks and context managers run, and the workers are stopped by PID on
    normal exit, exception, SIGINT and SIGTERM;
* TFF's own default context is replaced by one that refuses to run, so no
    computation can silently start an unowned worker outside the runtime;
* a worker that dies mid-run ends the computation in flight (or the next one)
    with `WorkerLostError`, one line naming the worker and its log, instead of
    TFF retrying UNAVAILABLE forever: every RPC goes through a stub that
    checks the owned process before the call and after a failed one, so TFF's
    retry loop (which only retries `RetryableError`) stops at once, and no
    RPC is left retrying in TFF's event-loop thread after the runtime exits.
    Ctrl-C keeps working during a computation: the main thread only waits on
    a future, which SIGINT interrupts;
* a worker is ready only when *its own* process listens on its port; one that
    cannot bind (portpicker's port taken by someone else meanwhile) is
    restarted on a fresh port a few times, then one clear `WorkerStartError`;
    waiting for readiness is bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Optional

import grpc
import portpicker
import psutil
import tensorflow_federated as tff
from tensorflow_federated.proto.v0 import executor_pb2

_PR_SET_PDEATHSIG = 1
_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0
# How long a failed RPC waits for the worker to be reaped: the socket closes a
# moment before the kernel reports the exit.
_DEATH_GRACE_S = 1.0
_START_ATTEMPTS = 4
_GRPC_MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000
_GRPC_OPTIONS = [
        ("grpc.max_message_length", _GRPC_MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", _GRPC_MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", _GRPC_MAX_MESSAGE_BYTES),
]

# Resolved before any fork: the child between fork and exec must only make
# one async-signal-safe system call.
_libc = ctypes.CDLL(None, use_errno=True)


class RuntimeNotStartedError(RuntimeError):
    """A federated computation was invoked outside `local_runtime()`."""


class WorkerLostError(RuntimeError):
    """The owned TFF worker died while the runtime was in use."""


class WorkerStartError(RuntimeError):
    """The owned TFF worker never became ready."""


class TerminatedBySignal(SystemExit):
    """Raised in the main thread when the process receives SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


class _RefusingContext(tff.framework.SyncContext):
    """Default context that refuses to run, so no worker starts unowned."""

    def invoke(self, comp, arg):
        raise RuntimeNotStartedError(
                "no TFF runtime is running: invoke federated computations inside "
                "`with tff_prune.runtime.local_runtime():`")


def worker_binary_path() -> str:
    """Path of the C++ `worker_binary` shipped inside the TFF package."""
    return os.path.join(os.path.dirname(tff.__file__), "data", "worker_binary")


def _die_with_parent() -> None:
    # Runs in the child after fork: ask the kernel to SIGKILL this process when
    # the thread that started it dies, whatever the reason.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class WorkerProcess:
    """One C++ TFF worker serving on a loopback port, owned by this process."""

    def __init__(self, log_path: str, max_concurrent_computation_calls: int = -1):
        self.log_path = log_path
        self.port = portpicker.pick_unused_port()
        self.stopped = False
        binary = worker_binary_path()
        if not os.path.isfile(binary):
            raise RuntimeError(f"TFF worker binary not found at {binary}")
        self._log_file = open(log_path, "ab")
        self.process = subprocess.Popen(
                [binary, f"--port={self.port}",
                 f"--max_concurrent_computation_calls={max_concurrent_computation_calls}"],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                # Its own session: a terminal's Ctrl-C reaches only us, and we stop
                # the worker in order after our own cleanup.
                start_new_session=True,
                preexec_fn=_die_with_parent,
        )
        self.channel = grpc.insecure_channel(f"localhost:{self.port}", _GRPC_OPTIONS)
        self.stub = _WatchedStub(self.channel, self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def describe(self, note: str = "") -> str:
        """One line naming the worker: pid, port, how it ended, note, its log."""
        rc = self.process.returncode
        if rc is None:
            how = "still running"
        elif rc < 0:
            how = f"killed by {signal.Signals(-rc).name}"
        else:
            how = f"exited with code {rc}"
        return (f"TFF worker pid {self.pid} on port {self.port} {how}{note}; "
                f"see {self.log_path}")

    def lost_error(self) -> WorkerLostError:
        why = " (stopped by the runtime)" if self.stopped else " mid-run"
        return WorkerLostError(self.describe(why))

    def check_alive(self, grace_s: float = 0.0) -> None:
        """Raises `WorkerLostError` if the worker has exited (waits up to grace_s)."""
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            return
        raise self.lost_error()

    def _listens_on_port(self) -> bool:
        # READY alone is not proof: another program may hold the port we were
        # given, and the channel would then be connected to it.
        try:
            conns = psutil.Process(self.pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == self.port
                   for c in conns)

    def wait_ready(self, timeout_s: float = _READY_TIMEOUT_S) -> None:
        """Blocks until the worker's gRPC service answers, or raises."""
        deadline = time.monotonic() + timeout_s
        while not (self.stub.is_ready and self._listens_on_port()):
            if self.process.poll() is not None:
                raise WorkerStartError(self.describe(" before it was ready"))
            if time.monotonic() > deadline:
                raise WorkerStartError(
                        f"TFF worker pid {self.pid} on port {self.port} not ready after "
                        f"{timeout_s:.0f}s; see {self.log_path}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; always reaps the child."""
        self.stopped = True
        with contextlib.suppress(Exception):
            self.channel.close()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                self.process.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                self.process.wait()
        self._log_file.close()


class _WatchedStub(tff.framework.RemoteExecutorGrpcStub):
    """TFF's gRPC stub that refuses to talk to a dead worker.

    TFF retries a whole `invoke` for as long as RPCs fail with UNAVAILABLE, so
    a dead worker means an endless silent retry loop. Every RPC here first
    checks the owned process, and a failed RPC checks it again, raising
    `WorkerLostError` (not retryable) instead of TFF's retryable error.
    """

    def __init__(self, channel: grpc.Channel, worker: "WorkerProcess"):
        super().__init__(channel)
        self._worker = worker

    def _call(self, method, request):
        self._worker.check_alive()
        try:
            return method(request)
        except grpc.RpcError as e:
            # UNAVAILABLE (TFF's retryable error) is what a dying worker looks
            # like; give the kernel a moment to report its exit.
            retryable = isinstance(e, tff.framework.RetryableError)
            self._worker.check_alive(_DEATH_GRACE_S if retryable else 0.0)
            raise e

    def _dispose_call(self, method, request, empty):
        # Nothing is left to free on a dead worker: disposal (also run from
        # finalizers) must not raise.
        try:
            return self._call(method, request)
        except WorkerLostError:
            return empty

    def get_executor(self, request):
        return self._call(super().get_executor, request)

    def create_value(self, request):
        return self._call(super().create_value, request)

    def create_struct(self, request):
        return self._call(super().create_struct, request)

    def create_call(self, request):
        return self._call(super().create_call, request)

    def create_selection(self, request):
        return self._call(super().create_selection, request)

    def compute(self, request):
        return self._call(super().compute, request)

    def dispose(self, request):
        return self._dispose_call(super().dispose, request,
                                  executor_pb2.DisposeResponse())

    def dispose_executor(self, request):
        return self._dispose_call(super().dispose_executor, request,
                                  executor_pb2.DisposeExecutorResponse())


def start_worker(log_path: str, max_concurrent_computation_calls: int = -1,
                 attempts: int = _START_ATTEMPTS) -> WorkerProcess:
    """Starts a worker and waits until it serves, on a fresh port per attempt.

    A worker that exits before it is ready most likely lost its port to
    another program between portpicker's choice and its own bind, so it is
    retried on another port; after `attempts` tries, one `WorkerStartError`.
    A worker that is still running but never ready is not retried.
    """
    for attempt in range(1, attempts + 1):
        worker = WorkerProcess(log_path, max_concurrent_computation_calls)
        try:
            worker.wait_ready()
            return worker
        except WorkerStartError as e:
            exited = worker.process.poll() is not None
            worker.stop()
            if not exited:
                raise
            if attempt == attempts:
                raise WorkerStartError(
                        f"gave up after {attempts} ports: {e}") from None
        except BaseException:
            worker.stop()
            raise
    raise AssertionError("unreachable")


class LocalRuntime:
    """The running workers and the TFF context that talks to them."""

    def __init__(self, workers: list[WorkerProcess], default_num_clients: int):
        self.workers = workers
        worker = workers[0]

        def executor_stack(cardinalities):
            if cardinalities.get(tff.CLIENTS) is None:
                cardinalities[tff.CLIENTS] = default_num_clients
            executor = tff.framework.RemoteExecutor(worker.stub)
            executor.set_cardinalities(cardinalities)
            return executor

        self.context = tff.framework.SyncExecutionContext(
                executor_fn=tff.framework.ResourceManagingExecutorFactory(
                        executor_stack_fn=executor_stack),
                compiler_fn=tff.backends.native.desugar_and_transform_to_native,
                transform_args=tff.tensorflow.transform_args,
                transform_result=tff.tensorflow.transform_result,
        )

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.workers]


def _raise_terminated(signum, frame):  # pylint: disable=unused-argument
    raise TerminatedBySignal(signum)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `TerminatedBySignal` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def install_refusing_default_context() -> None:
    """Makes federated computations outside a runtime fail loudly."""
    tff.framework.set_default_context(_RefusingContext())


@contextlib.contextmanager
def local_runtime(
        log_dir: Optional[str] = None,
        default_num_clients: int = 0,
        max_concurrent_computation_calls: int = -1,
) -> Iterator[LocalRuntime]:
    """Starts a local C++ TFF worker, installs its context, and stops it on exit.

    Args:
        log_dir: where `tff_worker.log` is written (the worker's stdout and
            stderr); a fresh temporary directory when None.
        default_num_clients: cardinality of CLIENTS when it cannot be inferred.
        max_concurrent_computation_calls: passed to the worker; nonpositive means
            no limit.

    Yields:
        The `LocalRuntime`, whose `worker_pids` lists the processes it owns.
    """
    install_refusing_default_context()
    if log_dir is None:
        log_dir = tempfile.mkdtemp(prefix="tff_prune_runtime_")
    os.makedirs(log_dir, exist_ok=True)
    workers: list[WorkerProcess] = []
    with _sigterm_raises():
        try:
            workers.append(start_worker(
                    os.path.join(log_dir, "tff_worker.log"),
                    max_concurrent_computation_calls))
            runtime = LocalRuntime(workers, default_num_clients)
            with tff.framework.get_context_stack().install(runtime.context):
                yield runtime
        finally:
            # Block SIGINT/SIGTERM while stopping, so a second Ctrl-C cannot leave
            # a worker half stopped.
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK,
                                             {signal.SIGINT, signal.SIGTERM})
            try:
                for worker in workers:
                    worker.stop()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


# Importing this module is enough: from here on, nothing can start TFF's
# unowned default worker.
install_refusing_default_context()
