"""A run's metric files: metrics.csv, eval.csv and TensorBoard.

Written through `tff.program` release managers: a release under key k first
drops the rows at and past k, so a resumed run rewrites the rounds (epochs)
after its checkpoint instead of duplicating them.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import tensorflow_federated as tff

from tff_prune.program.checkpoints import sync
from tff_prune.task import base

# metrics.csv of a federated run, after the key column "round".
TRAIN_COLUMNS = ("phase", "client_model", "train_loss", "num_examples", "sparsity",
                 "masks_updated", "mask_change_fraction", "vote_agreement",
                 "bytes_down_per_client", "bytes_up_per_client", "dense_bytes_per_client",
                 "client_step_flops", "client_learning_rate", "server_learning_rate",
                 "round_seconds", "worker_peak_rss_bytes")
# metrics.csv of a centralized run, after the key column "epoch".
CENTRALIZED_TRAIN_COLUMNS = ("train_loss", "sparsity", "epoch_seconds", "elapsed_seconds")
# TensorBoard takes numbers only.
_TEXT_COLUMNS = ("phase",)


def shown_metrics(task: base.FederatedTask) -> tuple[str, ...]:
    """The task's metrics a progress line shows (no `detail` breakdowns), headline first."""
    return tuple(m.name for m in task.metrics if not m.detail)


def eval_columns(task: base.FederatedTask) -> tuple[str, ...]:
    """eval.csv's columns after the key: loss, the task's metrics, examples, sparsity."""
    return ("loss", *(m.name for m in task.metrics), "num_examples", "sparsity")


class MetricWriters:
    """The train and eval rows of one run, keyed by round (or epoch)."""

    def __init__(self, out_dir: str, key: str, train_columns: Sequence[str],
                 eval_columns: Sequence[str], tensorboard: bool = True):
        self.train_columns, self.eval_columns = tuple(train_columns), tuple(eval_columns)
        self._train = tff.program.CSVFileReleaseManager(
            os.path.join(out_dir, "metrics.csv"), key_fieldname=key)
        self._eval = tff.program.CSVFileReleaseManager(
            os.path.join(out_dir, "eval.csv"), key_fieldname=key)
        self._tensorboard = (tff.program.TensorBoardReleaseManager(
            os.path.join(out_dir, "tensorboard")) if tensorboard else None)

    def write_train(self, row: Mapping[str, Any], key: int) -> None:
        """The train columns of `row` (those it has)."""
        values = collections.OrderedDict(
            (k, row[k]) for k in self.train_columns if k in row)
        sync(self._train.release(values, key=key))
        if self._tensorboard is not None:
            sync(self._tensorboard.release(
                {k: v for k, v in values.items() if k not in _TEXT_COLUMNS}, key=key))

    def write_eval(self, metrics: Mapping[str, Any], key: int,
                   per_layer_sparsity: Optional[Mapping[str, float]] = None) -> None:
        """The eval columns of `metrics` (all required), and per-layer sparsity
        to TensorBoard."""
        values = collections.OrderedDict((k, metrics[k]) for k in self.eval_columns)
        sync(self._eval.release(values, key=key))
        if self._tensorboard is not None:
            sync(self._tensorboard.release(
                {**{f"eval/{k}": v for k, v in values.items()},
                 **{f"sparsity/{k}": v for k, v in (per_layer_sparsity or {}).items()}},
                key=key))
