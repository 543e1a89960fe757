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

from tff_prune.model import mask_policy
from tff_prune.model import wrappers
from tff_prune.pruning import config as config_lib
from tff_prune.pruning import importance as importance_lib
from tff_prune.pruning import stats
from tff_prune.task import base


def _assign_masked(variables: Sequence[tf.Variable], values: Sequence[tf.Tensor],
                   masks: Sequence[Optional[tf.Tensor]]) -> None:
    """Assigns `values` to the `variables` that have a mask (the rest never change)."""
    for variable, value, mask in zip(variables, values, masks):
        if mask is not None:
            variable.assign(value)


class CentralizedPruner:
    """Holds the masks of a wrapped Keras model and updates them on schedule."""

    def __init__(self, model: tf.keras.Model, pruning: config_lib.PruningConfig,
                 model_structure: base.ModelStructure, steps_per_round: int):
        if pruning.policy == "client_vote":
            raise config_lib.ConfigError(
                "--mask_policy=client_vote needs clients: use server or fixed "
                "with --mode=centralized")
        self.model = model
        self.pruning = pruning
        self.steps_per_round = max(1, steps_per_round)
        self.index = wrappers.index_prunable_weights(model)
        self.decider = mask_policy.MaskDecider(pruning, self.index, model_structure)
        trainable = model.trainable_weights
        self._non_trainable = model.non_trainable_weights
        self._trainable = trainable
        # Dense copies of every weight a mask can zero (kernels, coupled biases).
        self._shadow = [tf.Variable(v, trainable=False) for v in trainable]
        # Taylor sums of the current round and the dense kernels it started
        # with (the `w` of |w * dL/dw|, as a federated client's broadcast).
        self.importance = [tf.Variable(tf.zeros_like(trainable[i]), trainable=False)
                           for i in self.index.kernel_index]
        self._taylor_weights = [tf.Variable(trainable[i], trainable=False)
                                for i in self.index.kernel_index]
        for pos in self.index.step_index:  # as the federated server writes it
            self._non_trainable[pos].assign(1)

    def masks(self) -> list[Optional[tf.Tensor]]:
        """Mask per trainable weight (None: never masked)."""
        return wrappers.weight_masks(
            [v.read_value() for v in self._non_trainable], self.index,
            len(self._trainable), self.pruning.masks_biases)

    def masked_gradients(self, grads: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """Gradients with pruned coordinates zeroed (Taylor scores accumulated first)."""
        if self.pruning.importance == "taylor":
            step = importance_lib.taylor_step(
                [w.read_value() for w in self._taylor_weights],
                [grads[i] for i in self.index.kernel_index])
            for acc, score in zip(self.importance, step):
                acc.assign_add(score)
        return wrappers.apply_weight_masks(grads, self.masks())

    def apply_masks(self) -> None:
        """Zeroes pruned weights (after each optimizer step) and refreshes the
        dense copies of the kept ones."""
        masks = self.masks()
        _assign_masked(self._shadow, wrappers.where_kept(self._trainable, self._shadow, masks),
                       masks)
        _assign_masked(self._trainable, wrappers.apply_weight_masks(self._trainable, masks),
                       masks)

    def end_of_round(self, round_num: int) -> Optional[float]:
        """Updates the masks if the schedule prunes after `round_num`; returns
        the new sparsity of the covered kernels, or None when nothing changed.
        Either way the next round's Taylor scores start afresh."""
        sparsity = self._update_masks(round_num)
        self._start_taylor_round()
        return sparsity

    def _start_taylor_round(self) -> None:
        """Zero Taylor sums; `w` = the dense kernels the next round starts from."""
        for acc in self.importance:
            acc.assign(tf.zeros_like(acc))
        for w, i in zip(self._taylor_weights, self.index.kernel_index):
            w.assign(self._shadow[i])

    def _update_masks(self, round_num: int) -> Optional[float]:
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
            # A round is exactly `steps_per_round` steps: the mean per step.
            scores = importance_lib.finalize_taylor(
                [v.read_value() for v in self.importance], self.steps_per_round)
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
        masks = self.masks()
        _assign_masked(self._trainable, wrappers.apply_weight_masks(self._shadow, masks), masks)
        return float(stats.mask_sparsity(dict(zip(self.index.keys, new_masks)),
                                         self.decider.covered_keys)["overall"])
