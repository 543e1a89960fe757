"""What a client's local training costs, measured on the model it trains.

`training_step_flops` counts the float operations of one local training step
(forward, loss and gradients) on the graph of the very model a round sends
(full-size masked, or compact): masked zeros are still multiplied, so a
masked model costs what the dense one does, and only compaction lowers the
count. The optimizer update is left out (a few element-wise operations per
weight).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
# The per-op "flops" statistics TensorFlow registers for its kernels (what
# `tf.compat.v1.profiler`'s float_operation view sums); not in the public API.
from tensorflow.python.framework import ops as tf_ops

from tff_prune.task import base


def graph_float_ops(graph: tf.Graph) -> int:
    """Float operations of `graph`'s ops by their registered "flops" statistics.

    The sum TensorFlow's profiler reports for its float_operation view, without
    the profiler: it writes a line to stderr for every graph with an op whose
    count depends on data (e.g. a loss's label-length arithmetic); such ops are
    skipped here as there.
    """
    total = 0
    for op in graph.get_operations():
        try:
            stats = tf_ops.get_stats_for_node_def(graph, op.node_def, "flops")
        except ValueError:  # a shape known only at run time
            continue
        if stats.value:
            total += int(stats.value)
    return total


def training_step_graph(task: base.FederatedTask, model: tf.keras.Model,
                        batch: Any) -> tf.Graph:
    """The graph of one training step of `model` on a batch shaped as `batch`."""
    @tf.function
    def step(b):
        with tf.GradientTape() as tape:
            loss, _ = task.batch_loss(model, b, training=True)
        return tape.gradient(loss, model.trainable_weights)

    spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), batch)
    return step.get_concrete_function(spec).graph


def training_step_flops(task: base.FederatedTask, model: tf.keras.Model, batch: Any) -> int:
    """Float operations of one training step of `model` on `batch`."""
    return graph_float_ops(training_step_graph(task, model, batch))
