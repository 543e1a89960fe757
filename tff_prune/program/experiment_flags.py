"""absl flags of `run_experiment.py`, and their translation into configs."""

from __future__ import annotations

import os
import re

from absl import flags

from tff_prune.centralized import training
from tff_prune.federated import optimizers
from tff_prune.program import experiment_config
from tff_prune.program import registry
from tff_prune.pruning import config as config_lib
from tff_prune.pruning import schedule as schedule_lib
from tff_prune.runtime import owned as runtime

# -- run ---------------------------------------------------------------------
flags.DEFINE_enum("mode", "federated", ["federated", "centralized"],
                  "Federated pruning, or centralized training on pooled data.")
flags.DEFINE_string("root_output_dir", "experiments", "Where experiments are written.")
flags.DEFINE_string("experiment_name", None,
                    "Subdirectory of --root_output_dir (default: from the method).")
flags.DEFINE_integer("seed", 0, "Seed of weights, client sampling and data order.")
flags.DEFINE_integer("checkpoint_every_rounds", 5,
                     "Save the full server state every this many rounds (and at the end).")
flags.DEFINE_bool("overwrite", False,
                  "Replace an existing experiment whose settings differ (else refuse).")
flags.DEFINE_string("export_dir", None,
                    "TF Serving export base (EXPORT_DIR/TASK/VERSION); default "
                    "EXPERIMENT_DIR/export; 'none' skips the export.")
flags.DEFINE_bool("export_train_tflite", True,
                  "The export also writes assets.extra/train.tflite, the on-device "
                  "training artifact (one local step, docs/serving.md).")
flags.DEFINE_enum("progress", "auto", ["auto", "on", "off"],
                  "Progress bar over rounds; auto: only on an interactive terminal.")

# -- task ----------------------------------------------------------------------
flags.DEFINE_enum("task", registry.DEFAULT_TASK, list(registry.names()),
                  "What is trained: asr (Conformer-CTC speech recognition) or kws "
                  "(DS-CNN keyword spotting); each task adds its own flags below.")
# Every task's flags (absl must know them all before parsing).
registry.define_all_flags()

# -- pruning -----------------------------------------------------------------
flags.DEFINE_enum("pruning", "structured", list(config_lib.SCHEMES), "Pruning scheme.")
flags.DEFINE_enum("structure", "column", list(config_lib.STRUCTURES),
                  "Unit removed by --pruning=structured.")
flags.DEFINE_enum("importance", "magnitude", list(config_lib.IMPORTANCES),
                  "Weight magnitude, or client-side first-order Taylor |w * dL/dw|.")
flags.DEFINE_enum("sparsity_distribution", "uniform", list(config_lib.DISTRIBUTIONS),
                  "How the sparsity budget is shared across layers.")
flags.DEFINE_enum("mask_policy", "server", list(config_lib.MASK_POLICIES),
                  "Who decides the masks.")
flags.DEFINE_enum("pruning_schedule", "step", ["constant", "step", "polynomial"],
                  "How sparsity rises over rounds.")
flags.DEFINE_float("target_sparsity", 0.5, "Final fraction of prunable weights removed.")
flags.DEFINE_integer("prune_begin_round", 25, "First round whose end prunes.")
flags.DEFINE_integer("prune_end_round", 55, "Round at which the target is reached.")
flags.DEFINE_integer("prune_every_rounds", 5, "Rounds between mask updates.")
flags.DEFINE_integer("refine_rounds", 15,
                     "Rounds after --prune_end_round in which masks are re-decided at "
                     "the target; then masks are frozen (fine-tuning).")
flags.DEFINE_string("exclude_layers", None,
                    "Regex of layer names never pruned (default: the task's; ASR: "
                    "the first subsampling conv and the output layer).")
flags.DEFINE_list("block_shape", ["1", "4"], "Block shape of --pruning=block (rows,cols).")

# -- federated -----------------------------------------------------------------
flags.DEFINE_integer("total_rounds", 80,
                     "Federated rounds (80: what a 30-minute run allows on 2 cores; "
                     "bench/results/convergence.md).")
flags.DEFINE_integer("clients_per_round", 10, "Cohort size.")
flags.DEFINE_integer("client_epochs", 3, "Local epochs per round.")
flags.DEFINE_integer("client_batch_size", None,
                     "Local batch size (default: the task's: ASR 2, KWS 8).")
flags.DEFINE_enum("client_optimizer", "adam", list(experiment_config.OPTIMIZERS),
                  "Client optimizer.")
flags.DEFINE_float("client_learning_rate", 3e-3, "Client learning rate.")
flags.DEFINE_enum("server_optimizer", "sgd", list(experiment_config.OPTIMIZERS),
                  "Server optimizer on the averaged delta: sgd (FedAvg), sgdm "
                  "(server momentum), adam (FedAdam), yogi (FedYogi), lamb (Adam with a "
                  "per-tensor trust ratio ||w|| / ||update||).")
flags.DEFINE_float("server_learning_rate", 1.0, "Server learning rate.")
flags.DEFINE_float("server_momentum", 0.9, "Momentum of --server_optimizer=sgdm.")
flags.DEFINE_float("server_epsilon", 1e-3,
                   "Epsilon (adaptivity) of --server_optimizer=adam|yogi|lamb.")
for _side in ("client", "server"):
    flags.DEFINE_enum(f"{_side}_lr_schedule", "constant", list(optimizers.LR_SCHEDULES),
                      f"The {_side} learning rate over rounds: constant, exponential "
                      f"(times --{_side}_lr_decay_rate each round) or warmup_cosine "
                      "(cosine towards 0 at --total_rounds); all after a linear warm-up.")
    flags.DEFINE_integer(f"{_side}_lr_warmup_rounds", 0,
                         f"Rounds of linear warm-up of the {_side} learning rate.")
    flags.DEFINE_float(f"{_side}_lr_decay_rate", 1.0,
                       f"Per-round factor of --{_side}_lr_schedule=exponential.")
flags.DEFINE_float("clip_norm", 0.0, "Clip each client's weighted delta to this norm (0: off).")
flags.DEFINE_integer("eval_every_rounds", 10, "Held-out evaluation cadence.")
flags.DEFINE_string("initial_model", "",
                    "Start from this saved model (a seed model): a finished run's folder "
                    "or its final_model/, centralized or federated, of the same task and "
                    "architecture. Empty: fresh weights from --seed.")
flags.DEFINE_enum("client_model", "compact", list(experiment_config.CLIENT_MODELS),
                  "What clients train once units are pruned: the physically smaller "
                  "model (structured schemes; rounds before a mask update train "
                  "masked where clients score pruned weights) or the masked full-size one.")
flags.DEFINE_string("workers", "",
                    "Comma-separated host:port of running TFF workers (python -m "
                    "tff_prune.worker --port=N) to split each round's cohort across; "
                    "empty: --local_workers owned local workers.")
flags.DEFINE_integer("local_workers", 1,
                     "Owned local TFF workers the cohort is split across (without --workers).")
flags.DEFINE_integer("worker_concurrency", 0,
                     "Computations each owned local worker runs at once (a cohort's "
                     "clients queue for them): 0 = two per CPU core, -1 = no limit.")
flags.DEFINE_float("worker_lost_after_s", 20.0,
                   "A --workers worker unavailable this long (TFF retrying) ends the "
                   "run with an error; the last checkpoint stays and a rerun resumes.")
flags.DEFINE_bool("datasets_on_workers", True,
                  "Clients build their datasets from ids inside the TFF workers where "
                  "the task allows it (only ids cross the wire); false: the controller "
                  "builds and sends them.")

# -- centralized -------------------------------------------------------------
flags.DEFINE_integer("centralized_epochs", 10, "Epochs of --mode=centralized.")
flags.DEFINE_integer("centralized_batch_size", 16, "Batch size of --mode=centralized.")
flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate of --mode=centralized.")
flags.DEFINE_integer("eval_every_epochs", 2, "Held-out evaluation cadence (centralized).")

FLAGS = flags.FLAGS

# PruningSchedule's argument names -> the flags that set them.
_SCHEDULE_FLAG_NAMES = {
    "kind": "--pruning_schedule", "target_sparsity": "--target_sparsity",
    "begin_round": "--prune_begin_round", "end_round": "--prune_end_round",
    "every_rounds": "--prune_every_rounds", "refine_rounds": "--refine_rounds",
}


def default_experiment_name() -> str:
    """From the method (and the task, unless it is the default one)."""
    prefix = "" if FLAGS.task == registry.DEFAULT_TASK else f"{FLAGS.task}_"
    if FLAGS.mode == "centralized":
        return f"{prefix}centralized_{FLAGS.pruning}"
    if FLAGS.pruning == "none":
        return f"{prefix}fedavg_dense"
    name = FLAGS.pruning + (f"_{FLAGS.structure}" if FLAGS.pruning == "structured" else "")
    return f"{prefix}{name}_{FLAGS.mask_policy}_s{int(round(FLAGS.target_sparsity * 100))}"


def experiment_config_from_flags() -> experiment_config.ExperimentConfig:
    """Validated `ExperimentConfig`; raises `ConfigError` with one line."""
    try:
        schedule = schedule_lib.PruningSchedule(
            kind=FLAGS.pruning_schedule, target_sparsity=FLAGS.target_sparsity,
            begin_round=FLAGS.prune_begin_round, end_round=FLAGS.prune_end_round,
            every_rounds=FLAGS.prune_every_rounds, refine_rounds=FLAGS.refine_rounds)
    except ValueError as e:
        # One line: the schedule lists each problem on its own line.
        problems = [l.strip(" -") for l in str(e).splitlines()[1:] if l.strip()]
        message = "; ".join(problems or [str(e)])
        for name, flag in _SCHEDULE_FLAG_NAMES.items():
            message = re.sub(rf"\b{name}\b", flag, message)
        raise config_lib.ConfigError(f"invalid pruning schedule: {message}") from None
    try:
        block_shape = tuple(int(x) for x in FLAGS.block_shape)
    except ValueError:
        raise config_lib.ConfigError(
            f"--block_shape must be two ints, not {','.join(FLAGS.block_shape)}") from None
    try:
        re.compile(FLAGS.exclude_layers or "")
    except re.error as e:
        raise config_lib.ConfigError(
            f"--exclude_layers={FLAGS.exclude_layers!r} is not a valid regex: {e}") from None
    task_spec = registry.get(FLAGS.task)
    if FLAGS.mode == "federated":
        batch_size = (task_spec.default_client_batch_size if FLAGS.client_batch_size is None
                      else FLAGS.client_batch_size)
    else:
        batch_size = FLAGS.centralized_batch_size
    if batch_size < 1:
        raise config_lib.ConfigError("batch size must be >= 1")
    if FLAGS.mode == "federated" and FLAGS.pruning != "none" and (
            FLAGS.prune_end_round > FLAGS.total_rounds):
        raise config_lib.ConfigError(
            f"--prune_end_round={FLAGS.prune_end_round} is after the last round "
            f"(--total_rounds={FLAGS.total_rounds})")
    try:
        workers = tuple(runtime.parse_worker_addresses(FLAGS.workers))
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from None
    task_config = task_spec.config_from_flags(
        FLAGS, batch_size=batch_size, seed=FLAGS.seed)
    return experiment_config.ExperimentConfig(
        mode=FLAGS.mode,
        root_output_dir=FLAGS.root_output_dir,
        experiment_name=FLAGS.experiment_name or default_experiment_name(),
        seed=FLAGS.seed,
        checkpoint_every_rounds=FLAGS.checkpoint_every_rounds,
        task_name=FLAGS.task,
        task=task_config,
        pruning=config_lib.PruningConfig(
            scheme=FLAGS.pruning, structure=FLAGS.structure, importance=FLAGS.importance,
            distribution=FLAGS.sparsity_distribution, policy=FLAGS.mask_policy,
            schedule=schedule, exclude_layers=FLAGS.exclude_layers,
            block_shape=block_shape),
        federated=experiment_config.FederatedConfig(
            total_rounds=FLAGS.total_rounds, clients_per_round=FLAGS.clients_per_round,
            client_epochs=FLAGS.client_epochs, client_optimizer=FLAGS.client_optimizer,
            client_learning_rate=FLAGS.client_learning_rate,
            server_optimizer=FLAGS.server_optimizer,
            server_learning_rate=FLAGS.server_learning_rate,
            server_momentum=FLAGS.server_momentum, server_epsilon=FLAGS.server_epsilon,
            **{f"{side}_lr_{name}": FLAGS[f"{side}_lr_{name}"].value
               for side in ("client", "server")
               for name in ("schedule", "warmup_rounds", "decay_rate")},
            clip_norm=FLAGS.clip_norm,
            initial_model=os.path.abspath(FLAGS.initial_model) if FLAGS.initial_model else "",
            eval_every_rounds=FLAGS.eval_every_rounds, client_model=FLAGS.client_model,
            workers=workers, local_workers=FLAGS.local_workers,
            datasets_on_workers=FLAGS.datasets_on_workers,
            worker_lost_after_s=FLAGS.worker_lost_after_s,
            worker_concurrency=FLAGS.worker_concurrency),
        centralized=training.CentralizedConfig(
            epochs=FLAGS.centralized_epochs, learning_rate=FLAGS.learning_rate,
            eval_every_epochs=FLAGS.eval_every_epochs, seed=FLAGS.seed),
    )
