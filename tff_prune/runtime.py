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
    computation can silently start an unowned worker outside the runtime.
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
import tensorflow_federated as tff

_PR_SET_PDEATHSIG = 1
_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0
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
        self.stub = tff.framework.RemoteExecutorGrpcStub(self.channel)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout_s: float = _READY_TIMEOUT_S) -> None:
        """Blocks until the worker's gRPC service answers, or raises."""
        deadline = time.monotonic() + timeout_s
        while not self.stub.is_ready:
            if self.process.poll() is not None:
                raise RuntimeError(
                        f"TFF worker exited with code {self.process.returncode} before it "
                        f"was ready; see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                        f"TFF worker not ready after {timeout_s:.0f}s; see {self.log_path}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; always reaps the child."""
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
            workers.append(WorkerProcess(
                    os.path.join(log_dir, "tff_worker.log"),
                    max_concurrent_computation_calls))
            for worker in workers:
                worker.wait_ready()
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
