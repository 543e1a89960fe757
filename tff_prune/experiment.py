"""The experiment program: one federated (or centralized) pruning run.

`run(config)` builds the task and the process, trains for the configured
rounds inside an owned TFF runtime, evaluates on held-out speakers, and
leaves behind, in `root_output_dir/experiment_name/`:

  metrics.csv     one row per round (loss, sparsity, mask updates, seconds)
  eval.csv        held-out loss / WER / CER every `eval_every_rounds` and at the end
  summary.json    flags, final metrics, model sizes, wall time, versions
  final_model/    the masked model's Keras weights (+ model config)
  logs/           the TFF worker's log
"""

from __future__ import annotations

import asyncio
import contextlib
import collections
import csv
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, ContextManager, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_model_optimization as tfmot
from absl import logging

from tasks.asr import data as data_lib
from tasks.asr import task as task_lib
from tasks.asr.corpus import CorpusError
from tasks.asr import text
from tff_prune import aggregation
from tff_prune import centralized
from tff_prune import client_cost
from tff_prune import compact_rounds
from tff_prune import config as config_lib
from tff_prune import federated_eval
from tff_prune import optimizers
from tff_prune import output_dir
from tff_prune import process as process_lib
from tff_prune import runtime
from tff_prune import wire
from tff_prune import wrappers
from tff_prune.export import compaction
from tff_prune.pruning import stats

OPTIMIZERS = optimizers.OPTIMIZERS
CLIENT_MODELS = ("compact", "masked")


@dataclasses.dataclass(frozen=True)
class FederatedConfig:
    """Rounds, cohort and optimizers of a federated run."""

    total_rounds: int = 50
    clients_per_round: int = 10
    client_epochs: int = 3
    client_optimizer: str = "adam"
    client_learning_rate: float = 3e-3
    server_optimizer: str = "sgd"
    server_learning_rate: float = 1.0
    server_momentum: float = 0.9     # sgdm
    server_epsilon: float = 1e-3     # adam, yogi: FedAdam's adaptivity τ
    # Learning rates over rounds (`tff_prune.optimizers.LearningRateSchedule`).
    client_lr_schedule: str = "constant"
    client_lr_warmup_rounds: int = 0
    client_lr_decay_rate: float = 1.0
    server_lr_schedule: str = "constant"
    server_lr_warmup_rounds: int = 0
    server_lr_decay_rate: float = 1.0
    clip_norm: float = 0.0
    eval_every_rounds: int = 10
    # What clients train once units are pruned: the physically smaller model
    # (where it applies, see `tff_prune.compact_rounds`) or the masked one.
    client_model: str = "compact"

    def __post_init__(self):
        for name in ("total_rounds", "clients_per_round", "client_epochs",
                     "eval_every_rounds"):
            if getattr(self, name) < 1:
                raise config_lib.ConfigError(f"--{name} must be >= 1, not {getattr(self, name)}")
        for name in ("client_optimizer", "server_optimizer"):
            if getattr(self, name) not in OPTIMIZERS:
                raise config_lib.ConfigError(
                    f"--{name}={getattr(self, name)!r} is not one of: {', '.join(OPTIMIZERS)}")
        for name in ("client_learning_rate", "server_learning_rate"):
            if not getattr(self, name) > 0:
                raise config_lib.ConfigError(f"--{name} must be > 0")
        if self.clip_norm < 0:
            raise config_lib.ConfigError("--clip_norm must be >= 0 (0 = no clipping)")
        if not 0 <= self.server_momentum < 1:
            raise config_lib.ConfigError(
                f"--server_momentum must be in [0, 1), not {self.server_momentum}")
        if not self.server_epsilon > 0:
            raise config_lib.ConfigError(f"--server_epsilon must be > 0, not {self.server_epsilon}")
        for side in ("client", "server"):
            self.lr_schedule(side)  # raises ConfigError naming the flag
        if self.client_model not in CLIENT_MODELS:
            raise config_lib.ConfigError(
                f"--client_model={self.client_model!r} is not one of: {', '.join(CLIENT_MODELS)}")

    def lr_schedule(self, side: str) -> optimizers.LearningRateSchedule:
        """The `client` or `server` learning rate over rounds."""
        return optimizers.LearningRateSchedule(
            kind=getattr(self, f"{side}_lr_schedule"),
            base=getattr(self, f"{side}_learning_rate"),
            warmup_rounds=getattr(self, f"{side}_lr_warmup_rounds"),
            decay_rate=getattr(self, f"{side}_lr_decay_rate"),
            total_rounds=self.total_rounds, names=f"--{side}_lr_")

    def client_optimizer_built(self) -> tff.learning.optimizers.Optimizer:
        """The clients' optimizer (its rate is set each round from the schedule)."""
        return optimizers.build_optimizer(self.client_optimizer, self.client_learning_rate)

    def server_optimizer_built(self) -> tff.learning.optimizers.Optimizer:
        """The server's optimizer, at its scheduled rate every round."""
        return optimizers.scheduled(
            optimizers.build_optimizer(self.server_optimizer, self.server_learning_rate,
                                       momentum=self.server_momentum,
                                       epsilon=self.server_epsilon),
            self.lr_schedule("server"))


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything one run needs; built from flags by `run_experiment.py`."""

    mode: str = "federated"
    root_output_dir: str = "experiments"
    experiment_name: str = "default"
    seed: int = 0
    checkpoint_every_rounds: int = 5
    corpus: data_lib.CorpusConfig = data_lib.CorpusConfig()
    task: task_lib.AsrTaskConfig = task_lib.AsrTaskConfig()
    pruning: config_lib.PruningConfig = dataclasses.field(
        default_factory=config_lib.PruningConfig)
    federated: FederatedConfig = FederatedConfig()
    centralized: centralized.CentralizedConfig = centralized.CentralizedConfig()

    def __post_init__(self):
        if self.mode not in ("federated", "centralized"):
            raise config_lib.ConfigError(
                f"--mode={self.mode!r} is not one of: federated, centralized")
        if self.seed < 0:
            raise config_lib.ConfigError(f"--seed must be >= 0, not {self.seed}")
        if self.checkpoint_every_rounds < 1:
            raise config_lib.ConfigError("--checkpoint_every_rounds must be >= 1")
        if self.mode == "centralized" and self.pruning.policy == "client_vote":
            raise config_lib.ConfigError(
                "--mask_policy=client_vote needs clients: use server or fixed "
                "with --mode=centralized")

    @property
    def output_dir(self) -> str:
        return os.path.join(self.root_output_dir, self.experiment_name)


class CsvWriter:
    """Appends rows to a CSV file, writing the header once; flushes each row."""

    def __init__(self, path: str, columns: list[str]):
        self.path, self.columns = path, columns
        new = not os.path.exists(path)
        self._file = open(path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=columns,
                                      extrasaction="ignore")
        if new:
            self._writer.writeheader()

    def write(self, row: dict) -> None:
        self._writer.writerow({k: _fmt(row.get(k, "")) for k in self.columns})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _fmt(value):
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


TRAIN_COLUMNS = ["round", "phase", "client_model", "train_loss", "num_examples", "sparsity",
                 "masks_updated", "mask_change_fraction", "vote_agreement",
                 "bytes_down_per_client", "bytes_up_per_client", "dense_bytes_per_client",
                 "client_step_flops", "client_learning_rate", "server_learning_rate",
                 "round_seconds"]
EVAL_COLUMNS = ["round", "loss", "wer", "cer", "num_examples", "sparsity"]


def _scalar(x) -> Any:
    return np.asarray(x).item()


def kernel_sparsity(weights: tff.learning.models.ModelWeights,
                    index: wrappers.PrunableWeightIndex,
                    covered_keys: tuple[str, ...]) -> dict[str, float]:
    """The method's sparsity (`stats.mask_sparsity` of the masks of the
    kernels it covers), per kernel and "overall"."""
    masks = {k: np.asarray(weights.non_trainable[i])
             for k, i in zip(index.keys, index.mask_index)}
    return {k: float(v) for k, v in stats.mask_sparsity(masks, covered_keys).items()}


def model_sizes(weights: tff.learning.models.ModelWeights) -> dict[str, int]:
    """Parameter counts and dense / sparse byte estimates of the masked model."""
    tensors = {str(i): np.asarray(t) for i, t in enumerate(weights.trainable)}
    params = int(sum(t.size for t in tensors.values()))
    nonzero = int(sum(np.count_nonzero(t) for t in tensors.values()))
    return {"params": params, "nonzero_params": nonzero,
            "dense_bytes": int(stats.dense_bytes(tensors)),
            "sparse_bytes": int(np.asarray(stats.sparse_bytes(tensors)))}


def build_task(config: ExperimentConfig) -> task_lib.AsrTask:
    train, test = data_lib.load_corpora(config.corpus)
    return task_lib.AsrTask(train, test, config.task)


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
        out, output_dir.flatten(_jsonable(dataclasses.asdict(config))), overwrite)
    task = build_task(config)
    if config.mode == "federated" and (
            config.federated.clients_per_round > len(task.train_client_ids)):
        raise config_lib.ConfigError(
            f"--clients_per_round={config.federated.clients_per_round} is larger "
            f"than the training population ({len(task.train_client_ids)} speakers)")
    output_dir.commit_output_dir(plan)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    with (native_stderr or (lambda _: contextlib.nullcontext()))(
            os.path.join(out, "logs", "native_stderr.log")):
        if config.mode == "federated":
            result = _run_federated(config, task, on_round)
        else:
            result = _run_centralized(config, task, on_round)
    summary = {
        "config": _jsonable(dataclasses.asdict(config)),
        "task": task.describe(),
        "final": result["final"],
        "model": result["model"],
        "client_model": result.get("client_model"),
        "wall_seconds": time.monotonic() - start,
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "tensorflow_federated": tff.__version__},
        "outputs": result["outputs"],
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    return summary


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "get_config"):
        return value.get_config()
    return str(value)


def _save_model(model: tf.keras.Model, weights, out: str, config: ExperimentConfig) -> str:
    """Saves the masked model without its pruning wrappers (Keras weights)."""
    path = os.path.join(out, "final_model")
    os.makedirs(path, exist_ok=True)
    weights.assign_weights_to(model)
    if config.pruning.enabled:
        model = tfmot.sparsity.keras.strip_pruning(model)
    model.save_weights(os.path.join(path, "weights"))
    with open(os.path.join(path, "model_config.json"), "w") as f:
        json.dump({"model": _jsonable(dataclasses.asdict(config.task.model_config())),
                   "task": _jsonable(dataclasses.asdict(config.task))}, f, indent=2)
    return path


def _sync(coroutine):
    """Runs one of tff.program's async calls to completion."""
    return asyncio.run(coroutine)


def cohort_for_round(client_ids, clients_per_round: int, seed: int,
                     round_num: int) -> list[str]:
    """Clients of a round: a pure function of (seed, round), so a resumed run
    samples exactly what an uninterrupted one would (no RNG state to save)."""
    rng = np.random.default_rng([seed, round_num])
    return sorted(rng.choice(list(client_ids), clients_per_round, replace=False))


def client_model_used(config: ExperimentConfig) -> str:
    """The client model the run trains: `compact` where compact rounds apply."""
    if (config.federated.client_model == "compact"
            and compact_rounds.applies(config.pruning)):
        return "compact"
    return "masked"


def build_rounds(config: ExperimentConfig, task: task_lib.AsrTask,
                 built: process_lib.FederatedPruningProcess
                 ) -> Optional[compact_rounds.CompactRounds]:
    """What runs the rounds: compact rounds, masked rounds in the sparse
    form (both with the process's own rounds where clients score pruned
    weights), or (None, no pruning) the process itself."""
    if not config.pruning.enabled:
        return None
    if client_model_used(config) == "compact":
        compactor = compaction.ConformerCompactor(task.model_config, text.VOCAB_SIZE)
    else:
        compactor = compact_rounds.FullSizeModel(task.build_model)
    return compact_rounds.CompactRounds(built, compactor)


def round_wire_bytes(client_work: tff.learning.templates.ClientWorkProcess
                     ) -> tuple[int, int]:
    """(bytes down, bytes up) per client of a round run by `client_work`: the
    sizes of the value each client receives and of the result it sends, read
    from the client work's own type signature."""
    signature = client_work.next.type_signature
    return (wire.type_bytes(signature.parameter[1]),
            wire.type_bytes(signature.result.result))


def dense_bytes_per_client(index: wrappers.PrunableWeightIndex) -> int:
    """What dense FedAvg moves each way per client: the full model's weights."""
    return wire.type_bytes(wrappers.tff_type(tuple(
        tf.TensorSpec(s, tf.float32) for s in index.trainable_shapes)))


class ClientStepFlops:
    """FLOPs of one local training step of the model a round's clients train
    (`tff_prune.client_cost`), on one fixed batch so rounds compare; measured
    once per client model (architecture)."""

    def __init__(self, task: task_lib.AsrTask, seed: int):
        self._batch = next(iter(task.client_dataset(task.train_client_ids[0],
                                                    training=True, seed=seed)))
        self._task = task
        self._flops: dict[Callable, int] = {}

    def __call__(self, model_fn: Callable[[], tf.keras.Model]) -> int:
        if model_fn not in self._flops:
            self._flops[model_fn] = client_cost.training_step_flops(
                self._task, model_fn(), self._batch)
        return self._flops[model_fn]


def load_latest_readable_checkpoint(
        state_manager: tff.program.FileProgramStateManager, checkpoint_dir: str,
        structure: Any) -> tuple[Any, int]:
    """(state, round) of the newest checkpoint that loads, or (None, 0).

    First removes TFF's half-written `*_temp*` leftovers (a crash during a
    save); a checkpoint that cannot be read is reported on stderr and the
    previous one is tried, so a damaged save costs rounds, never the run.
    """
    if os.path.isdir(checkpoint_dir):
        for name in os.listdir(checkpoint_dir):
            if "_temp" in name:
                shutil.rmtree(os.path.join(checkpoint_dir, name), ignore_errors=True)
    versions = sorted(_sync(state_manager.get_versions()) or [], reverse=True)
    for version in versions:
        try:
            return _sync(state_manager.load(version, structure)), version
        except Exception as e:  # pylint: disable=broad-except
            # TF raises many types for a damaged SavedModel; any of them means
            # this one is unusable and an older one may do.
            message = " ".join(str(e).split())[:200] or type(e).__name__
            print(f"[tff-prune] checkpoint round_{version} is unreadable ({message}); "
                  "trying the previous one", file=sys.stderr, flush=True)
    return None, 0


def _train_release(row: dict) -> collections.OrderedDict:
    return collections.OrderedDict((k, row[k]) for k in TRAIN_COLUMNS[1:] if k in row)


def _run_federated(config: ExperimentConfig, task: task_lib.AsrTask,
                   on_round: Optional[Callable[[dict], None]]) -> dict:
    fed = config.federated
    out = config.output_dir
    delta_factory = None
    if fed.clip_norm > 0:
        # Clips each client's own delta before weighting (see aggregation.py).
        delta_factory = aggregation.MaskedWeightedMeanFactory(clip_norm=fed.clip_norm)
    built = process_lib.build_federated_pruning_process(
        task, config.pruning,
        client_optimizer=fed.client_optimizer_built(),
        server_optimizer=fed.server_optimizer_built(),
        delta_aggregator=delta_factory, seed=config.seed)
    evaluate = federated_eval.build_federated_evaluation(
        task, built.model_fn, built.index, config.pruning.masks_biases)
    test_data = [task.client_dataset(c, training=False) for c in task.test_client_ids]
    # tff.program: the state manager writes each checkpoint beside its final
    # name and renames it into place, so a half-written one is never loaded;
    # the CSV release managers drop rows past the resumed round and rewrite them.
    state_manager = tff.program.FileProgramStateManager(
        os.path.join(out, "checkpoints"), prefix="round_", keep_total=2, keep_first=False)
    train_release = tff.program.CSVFileReleaseManager(
        os.path.join(out, "metrics.csv"), key_fieldname="round")
    eval_release = tff.program.CSVFileReleaseManager(
        os.path.join(out, "eval.csv"), key_fieldname="round")
    tensorboard = tff.program.TensorBoardReleaseManager(os.path.join(out, "tensorboard"))
    schedule = config.pruning.schedule
    final_eval: dict = {}
    client_model = client_model_used(config)
    rounds = build_rounds(config, task, built)
    dense_bytes = dense_bytes_per_client(built.index)
    step_flops = ClientStepFlops(task, config.seed)
    client_lr = fed.lr_schedule("client")
    with runtime.local_runtime(log_dir=os.path.join(out, "logs")):
        initial_state = built.process.initialize()
        state, done = load_latest_readable_checkpoint(
            state_manager, os.path.join(out, "checkpoints"), initial_state)
        if state is None:
            state, done = initial_state, 0
        else:
            logging.info("resuming %s after round %d", out, done)
        for round_num in range(done + 1, fed.total_rounds + 1):
            round_start = time.monotonic()
            cohort = cohort_for_round(task.train_client_ids, fed.clients_per_round,
                                      config.seed, round_num)
            datasets = [task.client_dataset(c, training=True,
                                            seed=config.seed * 1_000_003 + round_num * 1009 + i)
                        .repeat(fed.client_epochs)
                        for i, c in enumerate(cohort)]
            state = optimizers.set_round_learning_rate(
                built.process, state, client_lr, round_num)
            # The rates this round runs at, read from the state it starts from.
            rates = {"client_learning_rate": optimizers.learning_rate_of(
                         built.process.get_hparams(state)["client_work"]),
                     "server_learning_rate": optimizers.learning_rate_of(
                         state.finalizer["optimizer"])}
            if rounds is None:
                round_client_work, round_client_model = built.client_work, "masked"
                round_model_fn = built.model_fn
                output = built.process.next(state, datasets)
            else:
                # The compact (or sparse) model of the masks in force; the
                # process's own round while they prune nothing.
                round_client_work = rounds.client_work_for(state)
                round_client_model = rounds.client_model_for(state)
                round_model_fn = rounds.model_fn_for(state)
                output = rounds.next(state, datasets)
            round_seconds = time.monotonic() - round_start
            bytes_down, bytes_up = round_wire_bytes(round_client_work)
            state = output.state
            train = output.metrics["client_work"]["train"]
            fin = output.metrics["finalizer"]
            row = {
                "round": round_num,
                "phase": schedule.phase(round_num) if config.pruning.enabled else "dense",
                # Compact once units are cut; the full-size model before and
                # on rounds whose clients score pruned weights.
                "client_model": round_client_model,
                "train_loss": _scalar(train["loss_sum"]) / max(_scalar(train["num_examples"]), 1),
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
            }
            _sync(train_release.release(_train_release(row), key=round_num))
            _sync(tensorboard.release(
                {k: v for k, v in _train_release(row).items() if k != "phase"},
                key=round_num))
            last = round_num == fed.total_rounds
            if last or round_num % fed.eval_every_rounds == 0:
                weights = built.process.get_model_weights(state)
                metrics = federated_eval.finalize_eval_sums(evaluate(weights, test_data))
                per_layer = kernel_sparsity(weights, built.index, built.decider.covered_keys)
                metrics["sparsity"] = per_layer.pop("overall")
                release = collections.OrderedDict((k, metrics[k]) for k in EVAL_COLUMNS[1:])
                _sync(eval_release.release(release, key=round_num))
                _sync(tensorboard.release(
                    {**{f"eval/{k}": v for k, v in release.items()},
                     **{f"sparsity/{k}": v for k, v in per_layer.items()}},
                    key=round_num))
                row.update({f"eval_{k}": v for k, v in metrics.items()})
                final_eval = metrics
            if last or round_num % config.checkpoint_every_rounds == 0:
                _sync(state_manager.save(state, round_num))
            logging.info("round %d: %s", round_num, row)
            if on_round is not None:
                on_round(row)
        weights = built.process.get_model_weights(state)
        if not final_eval:  # resumed after the last round: evaluate once more
            final_eval = federated_eval.finalize_eval_sums(evaluate(weights, test_data))
            final_eval["sparsity"] = kernel_sparsity(
                weights, built.index, built.decider.covered_keys)["overall"]
    model_dir = _save_model(built.model_fn(), weights, out, config)
    sparsity = kernel_sparsity(weights, built.index, built.decider.covered_keys)
    return {
        "final": {**final_eval, "sparsity_per_layer": sparsity},
        "model": {**model_sizes(weights), "prunable_layers": built.prunable_layers},
        "client_model": client_model,
        "outputs": {"metrics_csv": os.path.join(out, "metrics.csv"),
                    "eval_csv": os.path.join(out, "eval.csv"),
                    "tensorboard": os.path.join(out, "tensorboard"),
                    "checkpoints": os.path.join(out, "checkpoints"),
                    "final_model": model_dir, "worker_log": os.path.join(out, "logs")},
    }


def _truncate_csv(path: str, key: str, last: int) -> None:
    """Drops the rows of `path` whose `key` is past `last` (a resumed run
    writes them again)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(path + ".tmp", "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(r for r in rows if int(r[key]) <= last)
    os.replace(path + ".tmp", path)


def _latest_centralized_epoch(checkpoint_dir: str) -> int:
    latest = tf.train.latest_checkpoint(checkpoint_dir) if os.path.isdir(checkpoint_dir) else None
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def _run_centralized(config: ExperimentConfig, task: task_lib.AsrTask,
                     on_round: Optional[Callable[[dict], None]] = None) -> dict:
    out = config.output_dir
    checkpoint_dir = os.path.join(out, "checkpoints")
    done = _latest_centralized_epoch(checkpoint_dir)
    for name in ("metrics.csv", "eval.csv"):
        _truncate_csv(os.path.join(out, name), "epoch", done)
    eval_csv = CsvWriter(os.path.join(out, "eval.csv"), ["epoch"] + EVAL_COLUMNS[1:])
    train_csv = CsvWriter(os.path.join(out, "metrics.csv"),
                          ["epoch", "train_loss", "sparsity", "epoch_seconds",
                           "elapsed_seconds"])

    def on_epoch_end(epoch, record):
        train_csv.write(record)
        if "test_wer" in record:
            eval_csv.write({"epoch": epoch, "sparsity": record["sparsity"],
                            **{k[5:]: v for k, v in record.items()
                               if k.startswith("test_")}})
        if on_round is not None:
            on_round({"round": epoch, "train_loss": record["train_loss"],
                      "sparsity": record["sparsity"],
                      **{f"eval_{k[5:]}": v for k, v in record.items()
                         if k.startswith("test_")}})

    model, history = centralized.train_centralized(
        task, dataclasses.replace(config.centralized, seed=config.seed),
        on_epoch_end=on_epoch_end, pruning=config.pruning,
        total_rounds=config.federated.total_rounds, checkpoint_dir=checkpoint_dir)
    train_csv.close()
    eval_csv.close()
    final = {k[5:]: v for k, v in history[-1].items()
             if k.startswith("test_") and k != "test_examples"}
    weights = tff.learning.models.ModelWeights.from_model(model)
    final["sparsity_per_layer"] = (
        kernel_sparsity(weights, wrappers.index_prunable_weights(model),
                        process_lib.covered_keys(model, config.pruning, task))
        if config.pruning.enabled else {"overall": 0.0})
    final["sparsity"] = final["sparsity_per_layer"]["overall"]
    path = _save_model(model, weights, out, config)
    return {"final": final, "model": model_sizes(weights),
            "outputs": {"metrics_csv": os.path.join(out, "metrics.csv"),
                        "eval_csv": os.path.join(out, "eval.csv"),
                        "checkpoints": checkpoint_dir, "final_model": path}}


USER_ERRORS = (config_lib.ConfigError, CorpusError)
