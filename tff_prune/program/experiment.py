"""The experiment program: one federated (or centralized) pruning run.

`run(config)` builds the registered task (`--task`) and trains it with the
federated driver (`tff_prune.program.federated_driver`) or the centralized baseline
(`tff_prune.program.centralized_driver`), leaving in `root_output_dir/experiment_name/`:

  config.json     the run's settings (a rerun with other settings is refused)
  metrics.csv     one row per round (loss, sparsity, mask updates, bytes, seconds)
  eval.csv        held-out loss and the task's metrics every `eval_every_rounds`
  summary.json    settings, final metrics, model sizes, wall time, versions
  diverged.json   instead of summary.json, when training diverged (`divergence`)
  final_model/    the masked model's Keras weights and the task's model record
  checkpoints/    the latest server states (resumable); tensorboard/; logs/
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable
from typing import ContextManager, Optional

import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.program import centralized_driver
from tff_prune.program import divergence
from tff_prune.program import federated_driver
from tff_prune.program import initial_model
from tff_prune.program import output_dir
from tff_prune.program import registry
from tff_prune.program.experiment_config import ExperimentConfig, jsonable
from tff_prune.pruning import config as config_lib
from tff_prune.runtime import owned as runtime
from tff_prune.task import base

# Bad user input, reported as one line: flags and settings, the task's data.
USER_ERRORS = (config_lib.ConfigError, base.DataError, runtime.WorkerUnreachableError,
               runtime.WorkerDataError)


def build_task(config: ExperimentConfig) -> base.FederatedTask:
    """The registered task of `config`, its data loaded; a data problem is a `DataError`."""
    spec = registry.get(config.task_name)
    try:
        return spec.build(config.task)
    except spec.user_errors as e:
        if isinstance(e, base.DataError):
            raise
        raise base.DataError(str(e)) from e


def run(config: ExperimentConfig,
        on_round: Optional[Callable[[dict], None]] = None,
        overwrite: bool = False,
        native_stderr: Optional[Callable[[str], ContextManager]] = None) -> dict:
    """Runs one experiment; returns the summary (also written to summary.json).

    An existing experiment with the same settings resumes from its latest
    checkpoint (a larger `total_rounds` extends it); one with different
    settings is refused, or replaced with `overwrite` -- but only once the new
    run has passed every check (data, cohort), so a failed start changes
    nothing on disk. `native_stderr(path)`, if given, is entered once the run
    has started, with the path of the run's native log.
    """
    start = time.monotonic()
    out = config.output_dir
    output_dir.prepare_output_dir(config.root_output_dir)
    plan = output_dir.plan_output_dir(
        out, output_dir.flatten(jsonable(dataclasses.asdict(config))), overwrite,
        defaults=output_dir.flatten(jsonable(dataclasses.asdict(
            ExperimentConfig(task_name=config.task_name)))))
    if config.mode == "federated":
        # Before the (slow) data and tracing: a wrong --workers fails at once.
        runtime.check_reachable(config.federated.workers)
    data_start = time.monotonic()
    task = build_task(config)
    data_seconds = time.monotonic() - data_start
    metrics = [dataclasses.asdict(m) for m in task.metrics]
    if config.mode == "federated" and (
            config.federated.clients_per_round > len(task.train_client_ids)):
        raise config_lib.ConfigError(
            f"--clients_per_round={config.federated.clients_per_round} is larger "
            f"than the training population ({len(task.train_client_ids)} clients)")
    start_model = None
    if config.mode == "federated" and config.federated.initial_model:
        start_model = initial_model.load_initial_model(
            config.federated.initial_model, config.task_name, task)
    output_dir.commit_output_dir(plan)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    with (native_stderr or (lambda _: contextlib.nullcontext()))(
            os.path.join(out, "logs", "native_stderr.log")):
        try:
            if config.mode == "federated":
                result = federated_driver.run_federated(config, task, on_round, start_model)
            else:
                result = centralized_driver.run_centralized(config, task, on_round)
        except divergence.DivergedError as e:
            divergence.write_record(out, e)
            raise
    summary = {
        "config": jsonable(dataclasses.asdict(config)),
        "task": task.describe(),
        # The task's held-out metrics, the headline first (report, progress).
        "metrics": metrics,
        "final": result["final"],
        "model": result["model"],
        "client_model": result.get("client_model"),
        "wall_seconds": time.monotonic() - start,
        # Measured here: loading (and featurizing what is not cached) the
        # task's data, and this process's peak memory (workers: "workers").
        "resources": {"data_seconds": data_seconds,
                      "controller_peak_rss_bytes": runtime.process_peak_rss_bytes(os.getpid())},
        "workers": result.get("workers"),
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "tensorflow_federated": tff.__version__},
        "outputs": result["outputs"],
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    # A record of an earlier attempt that diverged no longer describes the run.
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(out, divergence.RECORD))
    return summary
