"""One local training step under masks: what a client runs for every batch.

The one definition of the step, used by the federated clients
(`tff_prune.federated.client_work`) and by the on-device training artifact
(`tff_prune.export.on_device`): the loss's gradient, masked; one step of a
`tff.learning.optimizers` optimizer; the updated weights masked again, so
pruned weights stay exactly zero and the optimizer state never accumulates
on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import tensorflow as tf

from tff_prune.model import wrappers


def masked_step(trainable: Sequence[tf.Variable], masks: Sequence[Optional[tf.Tensor]],
                optimizer: Any, optimizer_state: Any,
                loss_fn: Callable[[], tuple[tf.Tensor, tf.Tensor]]
                ) -> tuple[Any, tf.Tensor, tf.Tensor, list[tf.Tensor]]:
    """Trains `trainable` by one step of `optimizer` on `loss_fn()`'s loss.

    `masks[i]`: the 0/1 mask of `trainable[i]` (None: never masked);
    `optimizer`: a `tff.learning.optimizers.Optimizer`; `loss_fn()`:
    (mean loss, number of examples) of one batch, computed from the
    variables. Returns (the optimizer's new state, the loss, the number of
    examples, the unmasked gradients, e.g. for Taylor importance).
    """
    with tf.GradientTape() as tape:
        loss, num_examples = loss_fn()
    grads = tape.gradient(loss, trainable)
    optimizer_state, updated = optimizer.next(
        optimizer_state, tuple(trainable), tuple(wrappers.apply_weight_masks(grads, masks)))
    for variable, value in zip(trainable, wrappers.apply_weight_masks(updated, masks)):
        variable.assign(value)
    return optimizer_state, loss, num_examples, grads


def optimizer_hparams(optimizer: Any) -> Any:
    """The hyperparameters of a `tff.learning.optimizers.Optimizer` (e.g.
    ``learning_rate``), read from a fresh state."""
    return optimizer.get_hparams(optimizer.initialize(tf.TensorSpec([], tf.float32)))
