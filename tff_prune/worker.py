"""Runs one TFF worker for remote controllers: ``python -m tff_prune.worker --port=N``.

The worker is TFF's own C++ `worker_binary` (the executor service behind
`tff.framework.RemoteExecutor`), which this program replaces itself with
(`exec`), so the worker keeps this PID and a supervisor (Kubernetes, systemd)
signals it directly. Before that it checks what a run would otherwise fail
on deep inside a round:

* ``--feature_cache_dir`` (the same flag, and default, as
  ``run_experiment.py``) must be a folder: the worker runs in it, because
  the datasets that controllers send as client ids open their feature
  shards by paths relative to it. A shared volume or a per-worker copy both
  work; the controller's own path does not matter.
* the port must be free.

The worker logs to stderr (TFF's and TensorFlow's native logging); one line
on stdout names what it serves. Controllers connect with
``run_experiment.py --workers=HOST:PORT,...`` (see docs/distributed.md).
"""

from __future__ import annotations

import os
import socket
import sys

from absl import app
from absl import flags

# Not tff_prune.runtime.owned: importing TensorFlow Federated would take seconds
# before the worker even listens.
from tff_prune.runtime import worker_binary

DEFAULT_FEATURE_CACHE_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "features")

_PORT = flags.DEFINE_integer("port", None, "Port the worker serves on.")
_FEATURE_CACHE_DIR = flags.DEFINE_string(
    "feature_cache_dir", DEFAULT_FEATURE_CACHE_DIR,
    "Feature cache folder (as run_experiment.py's); the worker runs in it.")
_MAX_CONCURRENT = flags.DEFINE_integer(
    "max_concurrent_computation_calls", -1,
    "Computations the worker runs at once (nonpositive: no limit).")


def _port_is_free(port: int) -> bool:
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((address, port))
            return True
        except OSError as e:
            if family == socket.AF_INET6 and e.errno in (97, 99):  # no IPv6 here
                continue
            return False
    return False


def worker_command(port: int, max_concurrent_computation_calls: int = -1) -> list[str]:
    """The `worker_binary` command line this program executes."""
    return [worker_binary.worker_binary_path(), f"--port={port}",
            f"--max_concurrent_computation_calls={max_concurrent_computation_calls}"]


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    port = _PORT.value
    if port is None or not 0 < port < 65536:
        print(f"tff_prune.worker: error: --port must be in 1..65535, not {port}",
              file=sys.stderr)
        return 2
    cache_dir = os.path.abspath(_FEATURE_CACHE_DIR.value)
    if not os.path.isdir(cache_dir):
        print(f"tff_prune.worker: error: --feature_cache_dir={cache_dir} is not a folder "
              "(copy or mount the controller's feature cache there)", file=sys.stderr)
        return 2
    if not _port_is_free(port):
        print(f"tff_prune.worker: error: port {port} is already in use", file=sys.stderr)
        return 2
    command = worker_command(port, _MAX_CONCURRENT.value)
    os.chdir(cache_dir)
    print(f"tff_prune.worker: TFF worker on port {port} (pid {os.getpid()}), "
          f"feature cache {cache_dir}", flush=True)
    sys.stderr.flush()
    os.execve(command[0], command, worker_binary.worker_environment(_MAX_CONCURRENT.value))
    return 0  # not reached


if __name__ == "__main__":
    app.run(main)
