"""The centralized driver: the same task trained on pooled data (the baseline).

`run_centralized(config, task, on_round)` trains `--centralized_epochs`
epochs (pruning on the federated schedule, rounds mapped to steps), resuming
from its Keras checkpoint, and writes metrics.csv / eval.csv and the final model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Optional

import tensorflow_federated as tff

from tff_prune.centralized import training
from tff_prune.model import mask_policy
from tff_prune.model import wrappers
from tff_prune.program import accounting
from tff_prune.program import final_model
from tff_prune.program import metric_writers
from tff_prune.program.experiment_config import ExperimentConfig
from tff_prune.task import base


def run_centralized(config: ExperimentConfig, task: base.FederatedTask,
                    on_round: Optional[Callable[[dict], None]] = None) -> dict:
    """Runs (or resumes) centralized training; returns final metrics, sizes, outputs."""
    out = config.output_dir
    checkpoint_dir = os.path.join(out, "checkpoints")
    writers = metric_writers.MetricWriters(
        out, "epoch", metric_writers.CENTRALIZED_TRAIN_COLUMNS,
        metric_writers.eval_columns(task), tensorboard=False)

    def on_epoch_end(epoch, record):
        writers.write_train(record, epoch)
        if "test_loss" in record:
            writers.write_eval({"sparsity": record["sparsity"],
                                **{k[5:]: v for k, v in record.items()
                                   if k.startswith("test_")}}, epoch)
        if on_round is not None:
            on_round({"round": epoch, "train_loss": record["train_loss"],
                      "sparsity": record["sparsity"],
                      "shown_metrics": metric_writers.shown_metrics(task),
                      **{f"eval_{k[5:]}": v for k, v in record.items()
                         if k.startswith("test_")}})

    model, history = training.train_centralized(
        task, dataclasses.replace(config.centralized, seed=config.seed),
        on_epoch_end=on_epoch_end, pruning=config.pruning,
        total_rounds=config.federated.total_rounds, checkpoint_dir=checkpoint_dir)
    final = {k[5:]: v for k, v in history[-1].items() if k.startswith("test_")}
    weights = tff.learning.models.ModelWeights.from_model(model)
    final["sparsity_per_layer"] = (
        accounting.kernel_sparsity(weights, wrappers.index_prunable_weights(model),
                                   mask_policy.covered_keys(model, config.pruning, task))
        if config.pruning.enabled else {"overall": 0.0})
    final["sparsity"] = final["sparsity_per_layer"]["overall"]
    path = final_model.save_final_model(model, weights, out, task, config.pruning.enabled)
    return {"final": final, "model": accounting.model_sizes(weights),
            "outputs": {"metrics_csv": os.path.join(out, "metrics.csv"),
                        "eval_csv": os.path.join(out, "eval.csv"),
                        "checkpoints": checkpoint_dir, "final_model": path}}
