"""TFF's C++ `worker_binary`: where it is (found without importing TFF, which
is slow) and the environment it runs in."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Optional


def worker_binary_path() -> str:
    """Path of the C++ `worker_binary` shipped inside the TFF package."""
    spec = importlib.util.find_spec("tensorflow_federated")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("tensorflow_federated is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "worker_binary")


#: Computation calls an owned worker runs at once by default, per CPU core
#: (`--worker_concurrency=0`; see `program.federated_driver.worker_concurrency`).
CALLS_PER_CORE = 2


def default_concurrent_calls() -> int:
    """The computation calls an owned worker runs at once by default."""
    return CALLS_PER_CORE * (os.cpu_count() or 1)


#: TensorFlow's variable for the size of a process's inter-op thread pool.
INTER_OP_THREADS_ENV = "TF_NUM_INTEROP_THREADS"
#: Inter-op threads a worker gets per computation call it runs at once.
INTER_OP_THREADS_PER_CALL = 2


def worker_environment(max_concurrent_computation_calls: int,
                       base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The environment to run `worker_binary` in: `base` (default: this
    process's) with TensorFlow's inter-op pool sized for the calls it runs
    at once (nonpositive: no limit, counted as `default_concurrent_calls`).

    A client's loop is a while loop whose ops run on the worker's inter-op
    threads, one at a time while it waits on its data. TensorFlow's default
    pool has one thread per core, which concurrent clients then share: on 2
    cores their rounds ran at 0.7 cores instead of 1.4-1.9 (measured
    2026-12-07; docs/results.md). A value already in `base` is kept.
    """
    env = dict(os.environ if base is None else base)
    calls = (max_concurrent_computation_calls if max_concurrent_computation_calls > 0
             else default_concurrent_calls())
    env.setdefault(INTER_OP_THREADS_ENV, str(INTER_OP_THREADS_PER_CALL * calls))
    return env
