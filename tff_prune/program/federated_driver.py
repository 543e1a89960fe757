"""The federated driver: rounds of the pruning process, evaluation, checkpoints.

`run_federated(config, task, on_round)` trains for `total_rounds` inside an
owned TFF runtime, resuming from the newest readable checkpoint, and writes
metrics.csv / eval.csv / TensorBoard, checkpoints/ and the final model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from absl import logging

from tff_prune.federated import aggregation
from tff_prune.federated import client_data
from tff_prune.federated import compact_rounds
from tff_prune.federated import federated_eval
from tff_prune.federated import optimizers
from tff_prune.federated import process as process_lib
from tff_prune.model import wrappers
from tff_prune.program import accounting
from tff_prune.program import checkpoints
from tff_prune.program import divergence
from tff_prune.program import final_model
from tff_prune.program import metric_writers
from tff_prune.program.experiment_config import ExperimentConfig, FederatedConfig
from tff_prune.runtime import owned as runtime
from tff_prune.runtime import worker_binary
from tff_prune.task import base


def _scalar(x) -> Any:
    return np.asarray(x).item()


def _largest(peak_rss_by_worker: dict) -> float:
    """The largest owned worker's peak RSS in bytes; NaN without owned workers."""
    known = [v for v in peak_rss_by_worker.values() if v is not None]
    return float(max(known)) if known else float("nan")


def worker_concurrency(flag_value: int) -> int:
    """The concurrent computations an owned worker is started with.

    0 (the default) is two per CPU core. In 14-round runs of the default
    experiment on a 2-core machine (docs/results.md, "How many clients a
    worker runs at once"), one per core held 0.61x the worker's peak memory
    of no limit but made full-size rounds slower (16.7 s against 12.7 s);
    two per core held 0.69x with round times within noise. -1 is TFF's no
    limit: a whole cohort at once, one TensorFlow session each.
    """
    return worker_binary.default_concurrent_calls() if flag_value == 0 else flag_value


def cohort_for_round(client_ids, clients_per_round: int, seed: int,
                     round_num: int) -> list[str]:
    """Clients of a round: a pure function of (seed, round), so a resumed run
    samples exactly what an uninterrupted one would (no RNG state to save)."""
    rng = np.random.default_rng([seed, round_num])
    return sorted(rng.choice(list(client_ids), clients_per_round, replace=False))


def client_model_used(config: ExperimentConfig, task: base.FederatedTask) -> str:
    """The client model the run trains: `compact` where compact rounds apply
    and the task can compact its model."""
    if (config.federated.client_model == "compact"
            and compact_rounds.applies(config.pruning) and task.compactor() is not None):
        return "compact"
    return "masked"


def build_rounds(config: ExperimentConfig, task: base.FederatedTask,
                 built: process_lib.FederatedPruningProcess,
                 compose: Optional[Callable] = None,
                 on_model_built: Optional[wrappers.OnModelBuilt] = None,
                 ) -> Optional[compact_rounds.CompactRounds]:
    """What runs the rounds: compact rounds, masked rounds in the sparse
    form (both with the process's own rounds where clients score pruned
    weights), or (None, no pruning) the process itself. `compose` adapts
    each round computation to how client data arrive (`client_data`);
    `on_model_built` is `CompactRounds`'."""
    if not config.pruning.enabled:
        return None
    compactor = task.compactor()
    if client_model_used(config, task) != "compact":
        compactor = compact_rounds.FullSizeModel(task.build_model)
    return compact_rounds.CompactRounds(built, compactor, compose, on_model_built)


def _divergence_settings(fed: FederatedConfig, rates: dict) -> str:
    """The settings a diverged run's message points at, with their values."""
    clip = (f"--clip_norm (now {fed.clip_norm:g})" if fed.clip_norm > 0
            else "--clip_norm (now off)")
    return (f"--client_learning_rate (this round {rates['client_learning_rate']:.3g}), "
            f"--server_learning_rate (this round {rates['server_learning_rate']:.3g}) "
            f"and {clip}")


def run_federated(config: ExperimentConfig, task: base.FederatedTask,
                  on_round: Optional[Callable[[dict], None]],
                  initial_model: Optional[tf.keras.Model] = None) -> dict:
    """Runs (or resumes) the federated rounds; returns final metrics, sizes,
    outputs. `initial_model`: the task's model whose weights round 1 starts
    from (`--initial_model`; else fresh weights from the seed)."""
    fed = config.federated
    out = config.output_dir
    delta_factory = None
    if fed.clip_norm > 0:
        # Clips each client's own delta before weighting (see aggregation.py).
        delta_factory = aggregation.MaskedWeightedMeanFactory(clip_norm=fed.clip_norm)
    # Each client model's FLOPs are counted on its first build, before it is
    # traced: no Keras build just for the count.
    step_flops = accounting.ClientStepFlops(task, config.seed)
    built = process_lib.build_federated_pruning_process(
        task, config.pruning,
        client_optimizer=fed.client_optimizer_built(),
        server_optimizer=fed.server_optimizer_built(),
        delta_aggregator=delta_factory, seed=config.seed, initial_model=initial_model,
        on_model_built=step_flops.count)
    # Clients build their datasets from ids inside the workers where the task
    # allows it (only ids cross the wire); else the controller sends datasets.
    train_inputs = client_data.ClientInputs(task, training=True, epochs=fed.client_epochs,
                                            by_id=fed.datasets_on_workers)
    test_inputs = client_data.ClientInputs(task, training=False,
                                           by_id=fed.datasets_on_workers)
    evaluate = test_inputs.compose(federated_eval.build_federated_evaluation(
        task, built.model_fn, built.index, config.pruning.masks_biases,
        weights_type=built.weights_type))
    test_data = test_inputs.values(task.test_client_ids)
    # tff.program: the state manager writes each checkpoint beside its final
    # name and renames it into place, so a half-written one is never loaded.
    state_manager = tff.program.FileProgramStateManager(
        os.path.join(out, "checkpoints"), prefix="round_", keep_total=2, keep_first=False)
    writers = metric_writers.MetricWriters(
        out, "round", metric_writers.TRAIN_COLUMNS, metric_writers.eval_columns(task))
    schedule = config.pruning.schedule
    final_eval: dict = {}
    client_model = client_model_used(config, task)
    rounds = build_rounds(config, task, built, train_inputs.compose, step_flops.count)
    dense_bytes = accounting.dense_bytes_per_client(built.index)
    client_lr = fed.lr_schedule("client")
    concurrency = worker_concurrency(fed.worker_concurrency)
    # The owned workers' peak memory before the first compact round of this
    # process: what the compact phase's growth is judged against.
    dense_phase_peak_rss: dict = {}
    trained_full_size = False
    forgotten = 0  # compact architectures whose worker state was released
    with runtime.federated_runtime(
            workers=fed.workers, num_local_workers=fed.local_workers,
            log_dir=os.path.join(out, "logs"),
            remote_lost_after_s=fed.worker_lost_after_s,
            max_concurrent_computation_calls=concurrency,
            worker_cwd=train_inputs.worker_root or test_inputs.worker_root) as rt:
        initial_state = built.process.initialize()
        state, done = checkpoints.load_latest_readable_checkpoint(
            state_manager, os.path.join(out, "checkpoints"), initial_state)
        if state is None:
            state, done = initial_state, 0
        else:
            logging.info("resuming %s after round %d", out, done)
        if done < fed.total_rounds:
            # The scale a diverged training loss is judged against (`divergence`).
            reference_loss = federated_eval.finalize_eval_sums(
                task, evaluate(built.process.get_model_weights(initial_state), test_data))["loss"]
        for round_num in range(done + 1, fed.total_rounds + 1):
            round_start = time.monotonic()
            cohort = cohort_for_round(task.train_client_ids, fed.clients_per_round,
                                      config.seed, round_num)
            datasets = train_inputs.values(
                cohort, [client_data.round_seed(config.seed, round_num, i)
                         for i in range(len(cohort))])
            state = optimizers.set_round_learning_rate(state, client_lr, round_num)
            # The rates this round runs at, read from the state it starts from.
            # (In Python: no computation ships the state to read a scalar.)
            rates = {"client_learning_rate": optimizers.client_learning_rate(state),
                     "server_learning_rate": optimizers.learning_rate_of(
                         state.finalizer["optimizer"])}
            if rounds is None:
                round_client_work, round_client_model = built.client_work, "masked"
                round_model_fn = built.model_fn
                output = train_inputs.compose(built.process.next)(state, datasets)
            else:
                # The compact (or sparse) model of the masks in force; the
                # process's own round while they prune nothing.
                round_client_work = rounds.client_work_for(state)
                round_client_model = rounds.client_model_for(state)
                round_model_fn = rounds.model_fn_for(state)
                dense_phase_ends = (round_client_model == "compact" and trained_full_size
                                    and not dense_phase_peak_rss)
                if dense_phase_ends:
                    dense_phase_peak_rss = rt.worker_peak_rss_bytes()
                # The workers still hold what this process forgot: an older
                # architecture's round, or the full-size round at the end of
                # its phase (needed again only on rounds whose clients score).
                # The kept computations compile again.
                if dense_phase_ends or rounds.forgotten_architectures > forgotten:
                    rt.release_worker_state()
                    forgotten = rounds.forgotten_architectures
                output = rounds.next(state, datasets)
            round_seconds = time.monotonic() - round_start
            trained_full_size |= round_client_model != "compact"
            bytes_down, bytes_up = accounting.round_wire_bytes(round_client_work)
            train = output.metrics["client_work"]["train"]
            train_loss = _scalar(train["loss_sum"]) / max(_scalar(train["num_examples"]), 1)
            # Before anything of this round is written: the newest checkpoint
            # stays the last state trained without diverging.
            divergence.check_round_loss(round_num, train_loss, reference_loss,
                                        _divergence_settings(fed, rates))
            state = output.state
            fin = output.metrics["finalizer"]
            row = {
                "round": round_num,
                "phase": schedule.phase(round_num) if config.pruning.enabled else "dense",
                # Compact once units are cut; the full-size model before and
                # on rounds whose clients score pruned weights.
                "client_model": round_client_model,
                "train_loss": train_loss,
                "num_examples": _scalar(train["num_examples"]),
                "sparsity": _scalar(fin["sparsity"]) if "sparsity" in fin else 0.0,
                "masks_updated": int(_scalar(fin["masks_updated"])) if "masks_updated" in fin else 0,
                "mask_change_fraction": (_scalar(fin["mask_change_fraction"])
                                         if "mask_change_fraction" in fin else 0.0),
                # NaN (not a real agreement) on rounds without a vote-driven mask update.
                "vote_agreement": (_scalar(fin["vote_agreement"])
                                   if "vote_agreement" in fin else float("nan")),
                "bytes_down_per_client": bytes_down,
                "bytes_up_per_client": bytes_up,
                "dense_bytes_per_client": dense_bytes,
                "client_step_flops": step_flops(round_model_fn),
                **rates,
                "round_seconds": round_seconds,
                "worker_peak_rss_bytes": _largest(rt.worker_peak_rss_bytes()),
            }
            writers.write_train(row, round_num)
            last = round_num == fed.total_rounds
            if last or round_num % fed.eval_every_rounds == 0:
                weights = built.process.get_model_weights(state)
                metrics = federated_eval.finalize_eval_sums(task, evaluate(weights, test_data))
                per_layer = accounting.kernel_sparsity(
                    weights, built.index, built.decider.covered_keys)
                metrics["sparsity"] = per_layer.pop("overall")
                writers.write_eval(metrics, round_num, per_layer)
                row.update({f"eval_{k}": v for k, v in metrics.items()})
                row["shown_metrics"] = metric_writers.shown_metrics(task)
                final_eval = metrics
            if last or round_num % config.checkpoint_every_rounds == 0:
                checkpoints.sync(state_manager.save(state, round_num))
                checkpoints.pause_if_requested(round_num)
            logging.info("round %d: %s", round_num, row)
            if on_round is not None:
                on_round(row)
        weights = built.process.get_model_weights(state)
        if not final_eval:  # resumed after the last round: evaluate once more
            final_eval = federated_eval.finalize_eval_sums(task, evaluate(weights, test_data))
            final_eval["sparsity"] = accounting.kernel_sparsity(
                weights, built.index, built.decider.covered_keys)["overall"]
        workers = {"addresses": [w.address for w in rt.workers],
                   "remote": bool(fed.workers),
                   "owned_pids": rt.worker_pids,
                   "client_data": "ids" if train_inputs.by_id else "datasets",
                   "concurrency": None if fed.workers else concurrency,
                   "peak_rss_bytes_dense_phase": dense_phase_peak_rss or None,
                   "computations": rt.rpc_counts()}
    workers["peak_rss_bytes"] = rt.worker_peak_rss_bytes()  # read as each owned worker stopped
    model_dir = final_model.save_final_model(
        built.model_fn(), weights, out, task, config.pruning.enabled)
    sparsity = accounting.kernel_sparsity(weights, built.index, built.decider.covered_keys)
    return {
        "final": {**final_eval, "sparsity_per_layer": sparsity},
        "model": {**accounting.model_sizes(weights), "prunable_layers": built.prunable_layers},
        "client_model": client_model,
        "workers": workers,
        "outputs": {"metrics_csv": os.path.join(out, "metrics.csv"),
                    "eval_csv": os.path.join(out, "eval.csv"),
                    "tensorboard": os.path.join(out, "tensorboard"),
                    "checkpoints": os.path.join(out, "checkpoints"),
                    "final_model": model_dir, "worker_log": os.path.join(out, "logs")},
    }
