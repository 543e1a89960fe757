"""Held-out evaluation of a task's model: loss and the task's metrics."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow as tf

from tff_prune.task import base


def evaluation_sums(task: base.FederatedTask, model: tf.keras.Model,
                    batch: Any) -> dict[str, tf.Tensor]:
    """One batch's float64 sums, in graph: ``loss_sum``, ``num_examples`` and
    the task's `metric_sums` (they add up over batches and clients)."""
    loss, n = task.batch_loss(model, batch, training=False)
    n = tf.cast(n, tf.float64)
    sums = {"loss_sum": tf.cast(loss, tf.float64) * n, "num_examples": n}
    for name, value in task.metric_sums(model, batch).items():
        if name in sums:
            raise ValueError(f"{type(task).__name__}.metric_sums may not return {name!r}")
        sums[name] = tf.cast(value, tf.float64)
    return sums


def finalize_sums(task: base.FederatedTask, sums) -> dict[str, float]:
    """Loss per example, the task's metrics and ``num_examples`` from summed counts."""
    sums = {k: float(np.asarray(v)) for k, v in dict(sums).items()}
    return {"loss": sums["loss_sum"] / max(sums["num_examples"], 1.0),
            **task.finalize_metrics(sums),
            "num_examples": sums["num_examples"]}


def evaluate_model(task: base.FederatedTask, model: tf.keras.Model,
                   batches: Iterable[Any]) -> dict[str, float]:
    """Mean loss (per example) and the task's corpus-level metrics over `batches`.

    The same in-graph sums as federated evaluation, added up on the host.
    """

    @tf.function(reduce_retracing=True)
    def step(batch):
        return evaluation_sums(task, model, batch)

    totals: dict[str, float] = {}
    for batch in batches:
        for name, value in step(batch).items():
            totals[name] = totals.get(name, 0.0) + float(value)
    if not totals.get("num_examples"):
        raise ValueError("evaluation data is empty")
    return finalize_sums(task, totals)
