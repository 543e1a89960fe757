"""Sizes and CPU latency of exported models (the README's export table)."""

from __future__ import annotations

import gzip
import io
import os
import statistics
import tarfile
import time

import numpy as np
import tensorflow as tf

from tasks.asr import features as features_lib
from tff_prune.export import savedmodel


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


def serving_latencies(paths: list[str], seconds: float = 5.0, repeats: int = 20,
                      warmup: int = 3, signature: str = savedmodel.SERVING_SIGNATURE,
                      seed: int = 0) -> list[float]:
    """Median seconds of one call on batch 1 x ``seconds`` of audio, per SavedModel path.

    ``signature`` ``serving_default`` times the whole request (front end +
    model + greedy decoding) on raw audio; ``features`` times the model and
    decoding alone on the equivalent log-mel frames (100 per second). Each
    SavedModel is loaded in this process (TF's CPU kernels, as TF Serving
    runs it), and the models are timed in turns (round-robin), so load from
    other processes on a shared machine hits them alike and their ratios
    stay meaningful.
    """
    config = features_lib.FeatureConfig()
    rng = np.random.default_rng(seed)
    n = int(seconds * config.sample_rate)
    if signature == savedmodel.SERVING_SIGNATURE:
        inputs = {"audio": tf.constant(rng.uniform(-0.5, 0.5, (1, n)).astype(np.float32)),
                  "audio_lengths": tf.constant([n], tf.int32)}
    elif signature == savedmodel.FEATURES_SIGNATURE:
        frames = features_lib.num_feature_frames(n, config)
        inputs = {"features": tf.constant(rng.standard_normal(
                      (1, frames, config.num_mel_bins)).astype(np.float32)),
                  "feature_lengths": tf.constant([frames], tf.int32)}
    else:
        raise ValueError(f"cannot time signature {signature!r}")
    serves = [tf.saved_model.load(p).signatures[signature] for p in paths]
    for serve in serves:
        for _ in range(warmup):
            serve(**inputs)["logits"].numpy()
    times: list[list[float]] = [[] for _ in serves]
    for _ in range(repeats):
        for serve, record in zip(serves, times):
            start = time.perf_counter()
            serve(**inputs)["logits"].numpy()
            record.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]
