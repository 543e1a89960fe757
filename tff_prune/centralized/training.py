"""Centralized (non-federated) training: the sanity proof and the baseline.

The same task, model and loss as the federated runs, with all training
clients' data pooled. `--mode=centralized --pruning=none` shows that the model
really learns on the corpus; centralized pruning (the paper's comparison
point) reuses this loop.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Optional

import tensorflow as tf
from absl import logging

from tff_prune.centralized import pruner as pruner_lib
from tff_prune.model import evaluation
from tff_prune.model import mask_policy
from tff_prune.model import wrappers
from tff_prune.pruning import config as config_lib
from tff_prune.task import base


@dataclasses.dataclass(frozen=True)
class CentralizedConfig:
    """Optimization settings of the centralized loop."""

    epochs: int = 30
    learning_rate: float = 2e-3
    warmup_steps: int = 300
    min_learning_rate_ratio: float = 0.05
    clip_norm: float = 5.0
    weight_decay: float = 1e-4
    eval_every_epochs: int = 5
    time_budget_s: Optional[float] = None
    seed: int = 0

    def __post_init__(self):
        for name, flag in (("epochs", "--centralized_epochs"),
                           ("eval_every_epochs", "--eval_every_epochs")):
            if getattr(self, name) < 1:
                raise config_lib.ConfigError(
                    f"{flag} must be >= 1, not {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise config_lib.ConfigError(
                f"--learning_rate must be > 0, not {self.learning_rate}")


class WarmupCosineDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then cosine decay to `peak * min_ratio`."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int,
                 min_ratio: float):
        self.peak = peak
        self.warmup_steps = max(1, warmup_steps)
        self.total_steps = max(self.warmup_steps + 1, total_steps)
        self.min_ratio = min_ratio

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = self.peak * step / self.warmup_steps
        progress = tf.clip_by_value(
            (step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0.0, 1.0)
        cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
        decayed = self.peak * (self.min_ratio + (1.0 - self.min_ratio) * cosine)
        return tf.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return dict(peak=self.peak, warmup_steps=self.warmup_steps,
                    total_steps=self.total_steps, min_ratio=self.min_ratio)


def train_centralized(
    task: base.FederatedTask,
    config: CentralizedConfig,
    model: Optional[tf.keras.Model] = None,
    on_epoch_end: Optional[Callable[[int, dict], None]] = None,
    pruning: Optional[config_lib.PruningConfig] = None,
    total_rounds: int = 1,
    checkpoint_dir: Optional[str] = None,
) -> tuple[tf.keras.Model, list[dict]]:
    """Trains `task`'s model on pooled training data; returns it and history.

    With `pruning`, the model is wrapped and pruned on the federated round
    schedule, a round being 1/`total_rounds` of all training steps (so the
    pruning phases fall at the same fractions of training as in a federated
    run with `total_rounds` rounds). History has one record per epoch: train
    loss, sparsity, seconds, and (every `eval_every_epochs` and at the end)
    held-out loss / WER / CER.

    With `checkpoint_dir`, the model, the optimizer, the pruner's dense copies
    and scores and the epoch are saved after every epoch, and a call finding a
    checkpoint there continues after its epoch: the data order is a function
    of (seed, epoch), so a resumed run ends as an uninterrupted one would.
    History then holds only the epochs this call ran; when the checkpoint is
    already at the last epoch, its one record is the held-out evaluation.
    """
    tf.keras.utils.set_random_seed(config.seed)
    model = model or task.build_model()
    steps_per_epoch = sum(1 for _ in task.pooled_dataset(training=True, seed=0))
    pruner = None
    if pruning is not None and pruning.enabled:
        prunable = wrappers.select_prunable_layers(
            model, mask_policy.excluded_layers(task, pruning))
        wrapped = wrappers.wrap_for_pruning(model, prunable)
        model = wrapped
        pruner = pruner_lib.CentralizedPruner(
            model, pruning, task.model_structure,
            steps_per_round=round(steps_per_epoch * config.epochs / max(total_rounds, 1)))
    schedule = WarmupCosineDecay(config.learning_rate, config.warmup_steps,
                                 steps_per_epoch * config.epochs,
                                 config.min_learning_rate_ratio)
    optimizer = tf.keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=config.weight_decay,
        global_clipnorm=config.clip_norm)

    # One trace for every batch shape: a resumed run then executes exactly
    # the graph an uninterrupted one does (shape-specialised traces round
    # differently), so resuming is bit-exact.
    @tf.function(input_signature=[task.batch_spec])
    def train_step(batch):
        with tf.GradientTape() as tape:
            loss, _ = task.batch_loss(model, batch, training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        if pruner is not None:
            grads = pruner.masked_gradients(grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        if pruner is not None:
            pruner.apply_masks()
        return loss

    epoch_done = tf.Variable(0, dtype=tf.int64, trainable=False)
    sparsity_var = tf.Variable(0.0, dtype=tf.float64, trainable=False)
    manager = None
    if checkpoint_dir is not None:
        # Optimizer slots exist only after a first step: create them now so
        # that a restore fills them instead of deferring.
        optimizer.build(model.trainable_variables)
        pruner_state = ([] if pruner is None else
                        [v for name in ("_shadow", "importance")
                         for v in getattr(pruner, name, [])])
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                         pruner=pruner_state, epoch=epoch_done,
                                         sparsity=sparsity_var)
        manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=2,
                                             checkpoint_name="epoch")
        if manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
            logging.info("resuming centralized training after epoch %d",
                         int(epoch_done.numpy()))
    first_epoch = int(epoch_done.numpy()) + 1
    history = []
    start = time.monotonic()
    step = (first_epoch - 1) * steps_per_epoch
    sparsity = float(sparsity_var.numpy())
    if first_epoch > config.epochs:  # finished already: evaluate once more
        result = evaluation.evaluate_model(task, model, task.pooled_dataset(training=False))
        history.append({"epoch": config.epochs, "sparsity": sparsity,
                        **{f"test_{k}": v for k, v in result.items()}})
    for epoch in range(first_epoch, config.epochs + 1):
        epoch_start = time.monotonic()
        losses = []
        for batch in task.pooled_dataset(training=True, seed=config.seed * 1000 + epoch):
            losses.append(float(train_step(batch)))
            step += 1
            if pruner is not None and step % pruner.steps_per_round == 0:
                updated = pruner.end_of_round(step // pruner.steps_per_round)
                sparsity = sparsity if updated is None else updated
        record = {"epoch": epoch, "train_loss": sum(losses) / len(losses),
                  "sparsity": sparsity,
                  "epoch_seconds": time.monotonic() - epoch_start,
                  "elapsed_seconds": time.monotonic() - start}
        out_of_time = (config.time_budget_s is not None
                       and record["elapsed_seconds"] > config.time_budget_s)
        last = epoch == config.epochs or out_of_time
        if last or epoch % config.eval_every_epochs == 0:
            result = evaluation.evaluate_model(
                task, model, task.pooled_dataset(training=False))
            record.update({f"test_{k}": v for k, v in result.items()})
        history.append(record)
        logging.info("epoch %d: %s", epoch,
                     {k: v for k, v in record.items() if k != "test_examples"})
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
        if manager is not None:
            epoch_done.assign(epoch)
            sparsity_var.assign(sparsity)
            manager.save(checkpoint_number=epoch)
        if out_of_time:
            logging.info("time budget of %.0f s reached", config.time_budget_s)
            break
    return model, history
