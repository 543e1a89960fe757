"""What the round benches share: the task and cohort, timed variants, results.

Every bench measures ratios side by side in one run: variants are timed
round-robin (`time_round_robin`), so a load spike on the machine hits all of
them alike, and each table is written as Markdown + JSON (`write_results`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tasks.asr import data as data_lib
from tasks.asr import task as task_lib
from tff_prune.runtime import owned as runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")


def client_optimizer() -> tff.learning.optimizers.Optimizer:
    """The default run's client optimizer (Adam 3e-3)."""
    return tff.learning.optimizers.build_adam(3e-3)


def server_optimizer() -> tff.learning.optimizers.Optimizer:
    """The default run's server optimizer (SGD 1.0: plain FedAvg)."""
    return tff.learning.optimizers.build_sgdm(1.0)


def load_task(model_size: str, num_train_speakers: int, cache_dir: str) -> task_lib.AsrTask:
    """The ASR task on the built-in corpus (2 test speakers: benches train only)."""
    train, test = data_lib.load_corpora(data_lib.CorpusConfig(
        cache_dir=cache_dir, num_train_speakers=num_train_speakers, num_test_speakers=2),
        verify_audio=False)
    return task_lib.AsrTask(train, test, task_lib.AsrTaskConfig(model_size=model_size),
                            feature_cache_dir=os.path.join(cache_dir, "features"))


def cohort_data(task: task_lib.AsrTask, clients: int, epochs: int) -> list[tf.data.Dataset]:
    """The first `clients` training speakers' data, `epochs` local epochs."""
    return [task.client_dataset(c, training=True, seed=i).repeat(epochs)
            for i, c in enumerate(task.train_client_ids[:clients])]


class Variant:
    """One way to run a round (or a window of rounds), with its timings."""

    def __init__(self, name: str, step: Callable[[Any], None], client_work=None,
                 sparsity: float = 0.0, model_kind: str = "dense"):
        self.name, self.step, self.client_work = name, step, client_work
        self.sparsity, self.model_kind = sparsity, model_kind
        self.seconds: list[float] = []
        self.error: Optional[str] = None
        # The examples its clients trained on in its last round, where its
        # step reads them from the round's metrics.
        self.examples: Optional[int] = None

    def run(self, data) -> float:
        start = time.perf_counter()
        self.step(data)
        return time.perf_counter() - start

    @property
    def median(self) -> float:
        return float(np.median(self.seconds))


def time_round_robin(variants: list[Variant], data, repeats: int) -> None:
    """`repeats` timed runs of every variant, interleaved."""
    for _ in range(repeats):
        for variant in variants:
            if variant.error is None:
                variant.seconds.append(variant.run(data))


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory of a live process (VmHWM), in MiB."""
    peak = runtime.process_peak_rss_bytes(pid)
    if peak is None:
        raise RuntimeError(f"no VmHWM for pid {pid}")
    return peak / 2**20


def header(result: dict) -> dict:
    """Date, machine and cores: what every results file starts with."""
    return {"date": datetime.date.today().isoformat(), "machine": platform.machine(),
            "cpus": os.cpu_count(), **result}


def write_results(result: dict, markdown: str, out: str) -> None:
    """`out`.json and `out`.md (`out`: a path without extension); prints the table."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(out + ".md", "w") as f:
        f.write(markdown)
    print(markdown)


def argument_parser(doc: str, results_name: str, *, model_size: Optional[str] = "small",
                    repeats: int = 3) -> argparse.ArgumentParser:
    """The flags every round bench takes: model, cohort, repeats, corpus, outputs."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if model_size is not None:
        parser.add_argument("--model_size", default=model_size)
        parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--client_epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--num_train_speakers", type=int, default=200)
    parser.add_argument("--cache_dir", default=data_lib.DEFAULT_CACHE_DIR)
    parser.add_argument("--out", default=os.path.join(RESULTS, results_name),
                        help="path without extension: writes .md and .json")
    parser.add_argument("--work_dir", default="/tmp/tff_prune_bench")
    return parser


def row_in_subprocess(module: str, flags: list[str], args: argparse.Namespace,
                      what: str) -> dict:
    """One results row measured by `python -m module flags...` in its own
    process (its own memory, its own TFF computations), with `args`' shared
    corpus and work flags; the row is the last line of its stdout (JSON)."""
    out = subprocess.run(
        [sys.executable, "-m", module, *flags, f"--client_epochs={args.client_epochs}",
         f"--repeats={args.repeats}", f"--num_train_speakers={args.num_train_speakers}",
         f"--cache_dir={args.cache_dir}", f"--work_dir={args.work_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"{module}: {what} failed:\n" + out.stderr[-2000:])
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"[bench] {row}", file=sys.stderr, flush=True)
    return row
