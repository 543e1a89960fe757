"""Centralized pruning: the paper's comparison point, on pooled data.

The same wrapped model, mask computation (`MaskDecider`) and round schedule
as the federated runs, with a "round" mapped to a fixed number of optimizer
steps so that both runs prune at the same fractions of training. Like the
federated server, it keeps a dense copy of every masked weight, so that a
pruned weight keeps the value it was pruned with and can come back during
refinement. Only the `server` and `fixed` policies exist here (there are no
clients to vote).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import tensorflow as tf

from tff_prune import client_work
from tff_prune import config as config_lib
from tff_prune import mask_policy
from tff_prune import wrappers


class CentralizedPruner:
    """Holds the masks of a wrapped Keras model and updates them on schedule."""

    def __init__(self, model: tf.keras.Model, pruning: config_lib.PruningConfig,
                 num_heads: int, steps_per_round: int):
        if pruning.policy == "client_vote":
            raise config_lib.ConfigError(
                "--mask_policy=client_vote needs clients: use server or fixed "
                "with --mode=centralized")
        self.model = model
        self.pruning = pruning
        self.steps_per_round = max(1, steps_per_round)
        self.index = wrappers.index_prunable_weights(model)
        self.decider = mask_policy.MaskDecider(pruning, self.index, num_heads)
        trainable = model.trainable_weights
        self._non_trainable = model.non_trainable_weights
        self._trainable = trainable
        # Dense copies of every weight a mask can zero (kernels, coupled biases).
        self._shadow = [tf.Variable(v, trainable=False) for v in trainable]
        self.importance = [tf.Variable(tf.zeros_like(trainable[i]), trainable=False)
                           for i in self.index.kernel_index]
        for pos in self.index.step_index:  # tfmot refuses to train without it
            self._non_trainable[pos].assign(1)

    def masks(self) -> list[Optional[tf.Tensor]]:
        """Mask per trainable weight (None: never masked)."""
        return client_work.weight_masks(
            [v.read_value() for v in self._non_trainable], self.index,
            len(self._trainable), self.pruning.masks_biases)

    def masked_gradients(self, grads: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """Gradients with pruned coordinates zeroed (Taylor scores accumulated first)."""
        if self.pruning.importance == "taylor":
            for acc, i in zip(self.importance, self.index.kernel_index):
                acc.assign_add(tf.abs(self._shadow[i] * grads[i]))
        return [g if m is None else g * m for g, m in zip(grads, self.masks())]

    def apply_masks(self) -> None:
        """Zeroes pruned weights (after each optimizer step) and refreshes the
        dense copies of the kept ones."""
        for v, shadow, m in zip(self._trainable, self._shadow, self.masks()):
            if m is not None:
                shadow.assign(tf.where(m > 0, v, shadow))
                v.assign(v * m)

    def end_of_round(self, round_num: int) -> Optional[float]:
        """Updates the masks if the schedule prunes after `round_num`; returns
        the new sparsity of the covered kernels, or None when nothing changed."""
        schedule = self.pruning.schedule
        if self.pruning.policy == "fixed":
            if round_num != schedule.begin_round:
                return None
            sparsity = schedule.target_sparsity
        else:
            if not schedule.should_update_masks(round_num):
                return None
            sparsity = schedule.sparsity(round_num)
        self.apply_masks()
        kernels = [self._shadow[i] for i in self.index.kernel_index]
        if self.pruning.importance == "taylor":
            scores = [v.read_value() for v in self.importance]
            coupled = None
        else:
            scores = [tf.abs(k) for k in kernels]
            coupled = self.decider.coupled_magnitudes(
                [s.read_value() for s in self._shadow], self.index)
        new_masks = self.decider.from_scores(scores, tf.constant(sparsity, tf.float32),
                                             coupled)
        for pos, mask in zip(self.index.mask_index, new_masks):
            self._non_trainable[pos].assign(mask)
        # Revived weights come back with their stored dense values.
        for v, shadow, m in zip(self._trainable, self._shadow, self.masks()):
            if m is not None:
                v.assign(shadow * m)
        for acc in self.importance:
            acc.assign(tf.zeros_like(acc))
        covered = set(self.decider.covered_keys)
        zeros = sum(float(tf.reduce_sum(1.0 - m)) for k, m in zip(self.index.keys, new_masks)
                    if k in covered)
        total = sum(int(m.shape.num_elements()) for k, m in zip(self.index.keys, new_masks)
                    if k in covered)
        return zeros / max(total, 1)
