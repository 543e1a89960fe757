"""Sizes and CPU latency of exported models (the README's export table)."""

from __future__ import annotations

import gzip
import io
import os
import statistics
import tarfile
import time
from collections.abc import Mapping

import tensorflow as tf

DEFAULT_SIGNATURE = "serving_default"


def gzip_bytes(path: str) -> int:
    """Bytes of ``saved_model.pb`` + ``variables/`` as a gzip'd tar (level 9).

    Zeros of unstructured sparsity stay in the dense variables file, but
    compress away: this is the size a download of the model would be.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(os.path.join(path, "saved_model.pb"), arcname="saved_model.pb")
        tar.add(os.path.join(path, "variables"), arcname="variables")
    return len(gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0))


def _call(serve, inputs: Mapping[str, tf.Tensor]) -> None:
    # Fetch every output to the host, so the timing covers the whole request.
    for value in serve(**inputs).values():
        value.numpy()


def serving_latencies(paths: list[str], inputs: Mapping[str, tf.Tensor],
                      signature: str = DEFAULT_SIGNATURE, repeats: int = 20,
                      warmup: int = 3) -> list[float]:
    """Median seconds of one ``signature`` call on ``inputs``, per SavedModel path.

    ``inputs`` is a task's request (e.g. `TaskExport.example_request`). Each
    SavedModel is loaded in this process (TF's CPU kernels, as TF Serving
    runs it), and the models are timed in turns (round-robin), so load from
    other processes on a shared machine hits them alike and their ratios
    stay meaningful.
    """
    serves = [tf.saved_model.load(p).signatures[signature] for p in paths]
    for serve in serves:
        for _ in range(warmup):
            _call(serve, inputs)
    times: list[list[float]] = [[] for _ in serves]
    for _ in range(repeats):
        for serve, record in zip(serves, times):
            start = time.perf_counter()
            _call(serve, inputs)
            record.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]
