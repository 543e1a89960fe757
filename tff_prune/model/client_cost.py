"""What a client's local training costs, measured on the model it trains.

`training_step_flops` counts the float operations of one local training step
(forward, loss and gradients) with TensorFlow's profiler, on the graph of the
very model a round sends (full-size masked, or compact): masked zeros are
still multiplied, so a masked model costs what the dense one does, and only
compaction lowers the count. The optimizer update is left out (a few
element-wise operations per weight).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tff_prune.task import base


def training_step_flops(task: base.FederatedTask, model: tf.keras.Model, batch: Any) -> int:
    """Float operations of one training step of `model` on `batch`."""
    @tf.function
    def step(b):
        with tf.GradientTape() as tape:
            loss, _ = task.batch_loss(model, b, training=True)
        return tape.gradient(loss, model.trainable_weights)

    spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), batch)
    graph = step.get_concrete_function(spec).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(tf.compat.v1.profiler.profile(graph, options=options).total_float_ops)
