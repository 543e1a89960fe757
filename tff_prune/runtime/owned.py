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

`federated_runtime(workers=[...])` instead connects to TFF workers someone
else runs (``python -m tff_prune.worker --port=N`` on other machines or
pods): each is checked reachable at start (one `WorkerUnreachableError`
naming the address otherwise), a worker that stops answering mid-run ends
the computation with `WorkerLostError` after a bounded retry window (TFF
alone would retry forever), and nothing is stopped at exit (not ours). With
more than one worker, owned or remote, TFF's mergeable execution context
(`tff.backends.native.create_mergeable_comp_execution_context`) splits each
computation's clients across them and merges their aggregates.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Optional, Union

import grpc
import portpicker
import psutil
import tensorflow_federated as tff
from tensorflow_federated.proto.v0 import executor_pb2
from tensorflow_federated.proto.v0 import executor_pb2_grpc

from tff_prune.runtime.worker_binary import worker_binary_path
from tff_prune.runtime.worker_binary import worker_environment

_PR_SET_PDEATHSIG = 1
_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0
# How long a failed RPC waits for the worker to be reaped: the socket closes a
# moment before the kernel reports the exit.
_DEATH_GRACE_S = 1.0
_START_ATTEMPTS = 4
# A remote worker is lost once its RPCs have failed as unavailable for this
# long without one success in between (TFF retries the computation meanwhile).
_REMOTE_LOST_AFTER_S = 20.0
_REMOTE_CONNECT_TIMEOUT_S = 10.0
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


class WorkerUnreachableError(RuntimeError):
    """A remote TFF worker (``--workers``) did not answer at start."""


class WorkerDataError(RuntimeError):
    """A TFF worker cannot open a file its clients' datasets read."""


_MISSING_FILE = re.compile(r"([^\s;:'\"]+); No such file or directory")


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
                "`with tff_prune.runtime.owned.local_runtime():`")


def _die_with_parent() -> None:
    # Runs in the child after fork: ask the kernel to SIGKILL this process when
    # the thread that started it dies, whatever the reason.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class WorkerProcess:
    """One C++ TFF worker serving on a loopback port, owned by this process."""

    def __init__(self, log_path: str, max_concurrent_computation_calls: int = -1,
                 cwd: Optional[str] = None):
        self.log_path = log_path
        self.port = portpicker.pick_unused_port()
        self.address = f"localhost:{self.port}"
        self.stopped = False
        self.rpc_counts: collections.Counter = collections.Counter()
        self.peak_rss_bytes: Optional[int] = None
        binary = worker_binary_path()
        if not os.path.isfile(binary):
            raise RuntimeError(f"TFF worker binary not found at {binary}")
        self._log_file = open(log_path, "ab")
        self.process = subprocess.Popen(
                [binary, f"--port={self.port}",
                 f"--max_concurrent_computation_calls={max_concurrent_computation_calls}"],
                env=worker_environment(max_concurrent_computation_calls),
                stdin=subprocess.DEVNULL,
                # Where the task's worker-side datasets open their files.
                cwd=cwd,
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

    def observe_peak_rss(self) -> Optional[int]:
        """The worker's peak resident memory so far: the largest VmHWM read.
        (A later VmHWM can be lower: the kernel reports the current RSS where
        that exceeds the high-water mark it recorded, and it records one only
        when it frees pages, not as the RSS grows.)"""
        reading = process_peak_rss_bytes(self.pid)
        if reading is not None:
            self.peak_rss_bytes = max(self.peak_rss_bytes or 0, reading)
        return self.peak_rss_bytes

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; always reaps the child."""
        if not self.stopped:
            self.observe_peak_rss()
        self.stopped = True
        with contextlib.suppress(Exception):
            self.stub.close()
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


def process_peak_rss_bytes(pid: int) -> Optional[int]:
    """A live process's peak resident set (VmHWM), or None if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class _CountingStub(tff.framework.RemoteExecutorGrpcStub):
    """TFF's gRPC stub that counts the RPCs each worker answered.

    The counts show that a split cohort reached every worker. Subclasses
    decide what a failed RPC means (`_call`)."""

    def __init__(self, channel: grpc.Channel, worker):  # pylint: disable=super-init-not-called
        # Not TFF's __init__: it subscribes to the channel's connectivity and
        # never unsubscribes, and closing a channel under that subscription
        # (a worker stopped or lost while gRPC reconnects) makes gRPC's polling
        # thread die with a traceback. Same fields, our own subscription.
        self._channel = channel
        self._stub = executor_pb2_grpc.ExecutorGroupStub(channel)
        self._channel_status = False
        self._worker = worker
        channel.subscribe(self._on_connectivity, try_to_connect=True)

    def _on_connectivity(self, connectivity: grpc.ChannelConnectivity) -> None:
        self._channel_status = connectivity

    def close(self) -> None:
        """Unsubscribes, lets gRPC's polling thread end, closes the channel."""
        self._channel.unsubscribe(self._on_connectivity)
        # With nothing subscribed the thread exits at its next poll (0.2 s).
        state = getattr(self._channel, "_connectivity_state", None)
        deadline = time.monotonic() + 1.0
        while getattr(state, "polling", False) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._channel.close()

    def _call(self, method, request):
        try:
            response = method(request)
        except grpc.RpcError as e:
            # Datasets built inside the worker open files relative to its
            # folder: one that is missing there is a deployment problem.
            details = e.details() if hasattr(e, "details") else str(e)
            missing = _MISSING_FILE.search(str(details or ""))
            if missing:
                raise WorkerDataError(
                    f"{self._worker.describe()} cannot read {missing.group(1)} in its "
                    "working folder: give every worker a complete copy of the "
                    "controller's --feature_cache_dir") from None
            raise
        self._worker.rpc_counts[method.__name__] += 1
        return response

    def _dispose_call(self, method, request, empty):
        # Nothing is left to free on a lost worker: disposal (also run from
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


class _WatchedStub(_CountingStub):
    """The stub of an owned worker: it refuses to talk to a dead one.

    TFF retries a whole `invoke` for as long as RPCs fail with UNAVAILABLE, so
    a dead worker means an endless silent retry loop. Every RPC here first
    checks the owned process, and a failed RPC checks it again, raising
    `WorkerLostError` (not retryable) instead of TFF's retryable error.
    """

    def _call(self, method, request):
        self._worker.check_alive()
        try:
            return super()._call(method, request)
        except grpc.RpcError as e:
            # UNAVAILABLE (TFF's retryable error) is what a dying worker looks
            # like; give the kernel a moment to report its exit.
            retryable = isinstance(e, tff.framework.RetryableError)
            self._worker.check_alive(_DEATH_GRACE_S if retryable else 0.0)
            raise e


class _RemoteStub(_CountingStub):
    """The stub of a remote worker: bounded retries, then `WorkerLostError`.

    A remote worker's process cannot be watched; an RPC failing as
    unavailable is passed on for TFF to retry (a restarting pod may come
    back), until failures without a success in between have lasted
    `lost_after_s`: then one `WorkerLostError` naming the address."""

    def _call(self, method, request):
        worker = self._worker
        try:
            response = super()._call(method, request)
        except grpc.RpcError as e:
            if not isinstance(e, tff.framework.RetryableError):
                raise
            now = time.monotonic()
            if worker.failing_since is None:
                worker.failing_since = now
            worker.failed_calls += 1
            if now - worker.failing_since >= worker.lost_after_s:
                raise worker.lost_error() from None
            raise
        worker.failing_since = None
        worker.failed_calls = 0
        return response


def start_worker(log_path: str, max_concurrent_computation_calls: int = -1,
                 attempts: int = _START_ATTEMPTS, cwd: Optional[str] = None,
                 ) -> WorkerProcess:
    """Starts a worker and waits until it serves, on a fresh port per attempt.

    A worker that exits before it is ready most likely lost its port to
    another program between portpicker's choice and its own bind, so it is
    retried on another port; after `attempts` tries, one `WorkerStartError`.
    A worker that is still running but never ready is not retried.
    """
    for attempt in range(1, attempts + 1):
        worker = WorkerProcess(log_path, max_concurrent_computation_calls, cwd)
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


class RemoteWorker:
    """A TFF worker someone else runs (``python -m tff_prune.worker``), by address."""

    def __init__(self, address: str, lost_after_s: float = _REMOTE_LOST_AFTER_S):
        self.address = address
        self.lost_after_s = lost_after_s
        self.rpc_counts: collections.Counter = collections.Counter()
        self.peak_rss_bytes: Optional[int] = None  # not ours to measure
        self.failing_since: Optional[float] = None
        self.failed_calls = 0
        self.channel = grpc.insecure_channel(address, _GRPC_OPTIONS)
        self.stub = _RemoteStub(self.channel, self)

    def describe(self, note: str = "") -> str:
        return f"TFF worker at {self.address}{note}"

    def lost_error(self) -> WorkerLostError:
        return WorkerLostError(self.describe(
            f" lost mid-run: unavailable for {self.lost_after_s:.0f}s "
            f"({self.failed_calls} failed calls)"))

    def wait_reachable(self, timeout_s: float = _REMOTE_CONNECT_TIMEOUT_S,
                       reported_timeout_s: Optional[float] = None) -> None:
        """Returns once the worker accepts a connection, else one
        `WorkerUnreachableError` naming its address."""
        ready = grpc.channel_ready_future(self.channel)
        try:
            ready.result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            ready.cancel()  # unsubscribes it from the channel before it is closed
            waited = reported_timeout_s or timeout_s
            raise WorkerUnreachableError(
                f"TFF worker at {self.address} is unreachable (no connection within "
                f"{waited:.0f}s): start it there with `python -m tff_prune.worker "
                f"--port=PORT`, or fix --workers") from None

    def stop(self) -> None:
        """Closes the connection (the worker itself keeps running: not ours)."""
        with contextlib.suppress(Exception):
            self.stub.close()


Worker = Union[WorkerProcess, RemoteWorker]


def check_reachable(addresses: Sequence[str],
                    timeout_s: float = _REMOTE_CONNECT_TIMEOUT_S) -> None:
    """Raises `WorkerUnreachableError` for the first of `addresses` that does
    not accept a connection within `timeout_s` (checked together)."""
    workers = [RemoteWorker(a) for a in addresses]
    try:
        deadline = time.monotonic() + timeout_s
        for worker in workers:
            worker.wait_reachable(max(0.1, deadline - time.monotonic()), timeout_s)
    finally:
        for worker in workers:
            worker.stop()


class _WorkerExecutors:
    """TFF's executor factory for one worker (one remote executor per set of
    placement cardinalities), and the means to release them all.

    A worker keeps, per executor, every computation it was sent, compiled,
    with its TensorFlow sessions (up to the worker's concurrency each), and
    frees them only when the executor is disposed of. Without `release`
    that is never: a run that trains a new compact architecture after each
    mask update would hold all of them until it ends.
    """

    def __init__(self, worker: Worker, default_num_clients: int):
        self._created: list[dict] = []

        def executor_stack(cardinalities):
            self._created.append(dict(cardinalities))  # the factory's key
            if cardinalities.get(tff.CLIENTS) is None:
                cardinalities[tff.CLIENTS] = default_num_clients
            executor = tff.framework.RemoteExecutor(worker.stub)
            executor.set_cardinalities(cardinalities)
            return executor
        self.factory = tff.framework.ResourceManagingExecutorFactory(
            executor_stack_fn=executor_stack)

    def release(self) -> int:
        """Disposes of every executor on the worker (between computations
        only); the next computation gets a fresh one. Returns how many."""
        created, self._created = self._created, []
        for cardinalities in created:
            self.factory.clean_up_executor(cardinalities)
        return len(created)


_CONTEXT_ARGS = dict(
    compiler_fn=tff.backends.native.desugar_and_transform_to_native,
    transform_args=tff.tensorflow.transform_args,
    transform_result=tff.tensorflow.transform_result,
)


class LocalRuntime:
    """The workers (owned or remote) and the TFF context that talks to them.

    One worker: TFF's synchronous remote context. Several: TFF's mergeable
    context over one asynchronous context per worker, which runs each
    computation's clients in one part per worker (the cohort split in
    order) and merges the parts' aggregates.
    """

    def __init__(self, workers: Sequence[Worker], default_num_clients: int):
        self.workers = list(workers)
        self._executors = [_WorkerExecutors(w, default_num_clients) for w in self.workers]
        if len(self.workers) == 1:
            self.context = tff.framework.SyncExecutionContext(
                executor_fn=self._executors[0].factory, **_CONTEXT_ARGS)
        else:
            self.context = tff.backends.native.create_mergeable_comp_execution_context([
                tff.framework.AsyncExecutionContext(executor_fn=e.factory, **_CONTEXT_ARGS)
                for e in self._executors])

    def release_worker_state(self) -> int:
        """Makes every worker free the computations it compiled so far (their
        executors are disposed of; later calls compile again). Call between
        computations. Returns the number of executors released."""
        return sum(e.release() for e in self._executors)

    @property
    def worker_pids(self) -> list[int]:
        """PIDs of the owned workers (remote ones have none here)."""
        return [w.pid for w in self.workers if isinstance(w, WorkerProcess)]

    def rpc_counts(self) -> dict[str, int]:
        """Computations each worker ran so far (`compute` RPCs), by address."""
        return {w.address: w.rpc_counts["compute"] for w in self.workers}

    def worker_peak_rss_bytes(self) -> dict[str, Optional[int]]:
        """Each owned worker's peak resident memory so far, by address (read
        at stop once stopped; None for remote workers)."""
        return {w.address: (w.peak_rss_bytes if w.stopped else w.observe_peak_rss())
                if isinstance(w, WorkerProcess) else None
                for w in self.workers}


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


def parse_worker_addresses(text: str) -> list[str]:
    """``host:port,host:port`` -> addresses; `ValueError` with one line if malformed."""
    addresses = [a.strip() for a in text.split(",") if a.strip()]
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--workers: {address!r} is not host:port")
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"--workers lists an address twice: {text}")
    return addresses


@contextlib.contextmanager
def federated_runtime(
        *,
        workers: Sequence[str] = (),
        num_local_workers: int = 1,
        log_dir: Optional[str] = None,
        worker_cwd: Optional[str] = None,
        default_num_clients: int = 0,
        max_concurrent_computation_calls: int = -1,
        remote_lost_after_s: float = _REMOTE_LOST_AFTER_S,
) -> Iterator[LocalRuntime]:
    """Installs a TFF context over remote workers, or owned local ones.

    Args:
        workers: ``host:port`` of running TFF workers (``python -m
            tff_prune.worker``); empty: start `num_local_workers` owned ones.
        num_local_workers: owned C++ workers to start (with no `workers`).
        log_dir: where owned workers write ``tff_worker.log`` (``-N`` suffixed
            beyond the first); a fresh temporary directory when None.
        worker_cwd: the owned workers' working folder (where the task's
            worker-side datasets resolve their relative file paths).
        default_num_clients: cardinality of CLIENTS when it cannot be inferred.
        max_concurrent_computation_calls: passed to owned workers; nonpositive
            means no limit.
        remote_lost_after_s: how long a remote worker may stay unavailable
            (TFF retrying) before the computation fails with `WorkerLostError`.

    Yields:
        The `LocalRuntime`: its workers, their RPC counts and owned PIDs.
    """
    install_refusing_default_context()
    if log_dir is None:
        log_dir = tempfile.mkdtemp(prefix="tff_prune_runtime_")
    os.makedirs(log_dir, exist_ok=True)
    started: list[Worker] = []
    with _sigterm_raises():
        try:
            if workers:
                for address in workers:
                    started.append(RemoteWorker(address, remote_lost_after_s))
                    started[-1].wait_reachable()
            else:
                for i in range(num_local_workers):
                    name = "tff_worker.log" if i == 0 else f"tff_worker-{i}.log"
                    started.append(start_worker(
                        os.path.join(log_dir, name), max_concurrent_computation_calls,
                        cwd=worker_cwd))
            runtime = LocalRuntime(started, default_num_clients)
            with tff.framework.get_context_stack().install(runtime.context):
                yield runtime
        finally:
            # Block SIGINT/SIGTERM while stopping, so a second Ctrl-C cannot leave
            # a worker half stopped.
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK,
                                             {signal.SIGINT, signal.SIGTERM})
            try:
                for worker in started:
                    worker.stop()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def local_runtime(
        log_dir: Optional[str] = None,
        default_num_clients: int = 0,
        max_concurrent_computation_calls: int = -1,
        worker_cwd: Optional[str] = None,
):
    """One owned local C++ TFF worker, its context installed, stopped on exit
    (see `federated_runtime`)."""
    return federated_runtime(log_dir=log_dir, default_num_clients=default_num_clients,
                             max_concurrent_computation_calls=max_concurrent_computation_calls,
                             worker_cwd=worker_cwd)


# Importing this module is enough: from here on, nothing can start TFF's
# unowned default worker.
install_refusing_default_context()
