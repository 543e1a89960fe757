"""Masks for the wrapped model's kernels, from scores or from client votes.

Bridges the pure mask math of `tff_prune.pruning` (dicts keyed by
'layer/kernel') and the TFF computations (lists aligned with
`PrunableWeightIndex.keys`). Kernels a structure does not cover (e.g. the
feed-forward layers under `--structure=head`) keep an all-ones mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import tensorflow as tf

from tff_prune.model import wrappers
from tff_prune.pruning import config as config_lib
from tff_prune.pruning import masks as masks_lib
from tff_prune.pruning import structures
from tff_prune.pruning import votes as votes_lib
from tff_prune.task import base


class MaskDecider:
    """Computes kernel masks for one pruning method on one model."""

    def __init__(self, pruning: config_lib.PruningConfig,
                 index: wrappers.PrunableWeightIndex,
                 model_structure: base.ModelStructure):
        self.pruning = pruning
        self.keys = index.keys
        self.structure = None
        if pruning.enabled and pruning.scheme != "m_by_n" and index.keys:
            layers = [key.rsplit("/", 1)[0] for key in index.keys]
            # Only prunable layers take part: a coupling through a layer that
            # is never pruned (the depthwise conv) is seen as a direct one.
            shapes = {k: s for k, s in index.weight_shapes().items()
                      if k.rsplit("/", 1)[0] in layers}
            self.structure = structures.build_unit_structure(
                shapes, pruning.scheme, pruning.structure,
                layers, model_structure, pruning.block_shape)

    @property
    def covered_keys(self) -> tuple[str, ...]:
        """Kernels whose masks this method decides (sparsity is measured on them)."""
        if self.structure is None:
            return self.keys
        return tuple(k for k in self.keys if k in self.structure.kernel_keys)

    def _to_list(self, masks: dict, like: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        return [masks[k] if k in masks else tf.ones_like(t)
                for k, t in zip(self.keys, like)]

    def _with_coupled(self, by_key: dict, coupled_scores: Optional[dict]) -> dict:
        """Adds scores of the non-kernel weights a structure couples (biases).

        Missing ones score 0: they then only dilute every unit's mean alike.
        """
        out = dict(by_key)
        for key, ids in self.structure.unit_ids.items():
            if key not in out:
                given = (coupled_scores or {}).get(key)
                out[key] = given if given is not None else tf.zeros(ids.shape, tf.float32)
        return out

    def from_scores(self, scores: Sequence[tf.Tensor], sparsity,
                    coupled_scores: Optional[dict] = None) -> list[tf.Tensor]:
        """Kernel masks keeping the highest-scoring units at `sparsity`.

        `coupled_scores`: {key: scores} of coupled non-kernel weights (biases).
        """
        by_key = dict(zip(self.keys, scores))
        if self.pruning.scheme == "m_by_n":
            # The schedule's sparsity, reached by pruning more 2:4 groups.
            masks = masks_lib.compute_m_by_n_masks(by_key, self.keys, sparsity=sparsity)
        else:
            masks = masks_lib.compute_masks(
                self._with_coupled(by_key, coupled_scores), self.structure,
                sparsity, self.pruning.distribution)
        return self._to_list(masks, scores)

    def coupled_magnitudes(self, trainable: Sequence[tf.Tensor],
                           index: wrappers.PrunableWeightIndex) -> dict:
        """{bias key: |bias|} for the biases the structure couples to units."""
        if self.structure is None:
            return {}
        return {index.trainable_keys[i]: tf.abs(trainable[i])
                for i in index.bias_index
                if i is not None and index.trainable_keys[i] in self.structure.unit_ids}

    def from_votes(self, votes: Sequence[tf.Tensor], tie_break: Sequence[tf.Tensor],
                   sparsity, coupled_scores: Optional[dict] = None) -> list[tf.Tensor]:
        """Server masks from example-weighted mean client masks (`client_vote`)."""
        if self.pruning.scheme == "m_by_n":
            # 2:4 groups: the vote is the score, magnitude breaks ties.
            scores = [v + 1e-6 * tf.abs(t) / (tf.reduce_max(tf.abs(t)) + 1e-12)
                      for v, t in zip(votes, tie_break)]
            return self.from_scores(scores, sparsity)
        # A coupled bias carries the vote of its kernel column: the weighted
        # fraction of clients that kept that output unit.
        vote_by_key = dict(zip(self.keys, votes))
        bias_votes = {}
        for key in self.structure.unit_ids:
            kernel_key = key.rsplit("/", 1)[0] + "/kernel"
            if key not in vote_by_key and kernel_key in vote_by_key:
                bias_votes[key] = wrappers.bias_mask_from_kernel_mask(
                    vote_by_key[kernel_key], depthwise=False)
        vote_by_key = self._with_coupled(vote_by_key, bias_votes)
        masks = votes_lib.masks_from_votes(
            vote_by_key,
            self._with_coupled({k: tf.abs(t) for k, t in zip(self.keys, tie_break)},
                               coupled_scores),
            self.structure, sparsity, self.pruning.distribution)
        return self._to_list(masks, votes)

    def agreement(self, votes: Sequence[tf.Tensor], masks: Sequence[tf.Tensor]) -> tf.Tensor:
        """How often client proposals agree with the final mask (1.0 = always)."""
        covered = set(self.covered_keys)
        return votes_lib.mask_agreement(
            {k: v for k, v in zip(self.keys, votes) if k in covered},
            {k: m for k, m in zip(self.keys, masks) if k in covered})


def excluded_layers(task: base.FederatedTask, pruning: config_lib.PruningConfig) -> str:
    """The regex of layers kept dense: `--exclude_layers`, else the task's default."""
    return task.excluded_layers if pruning.exclude_layers is None else pruning.exclude_layers


def covered_keys(wrapped: tf.keras.Model, pruning: config_lib.PruningConfig,
                 task: base.FederatedTask) -> tuple[str, ...]:
    """Kernels `pruning` decides in the wrapped model (where sparsity is measured)."""
    index = wrappers.index_prunable_weights(wrapped)
    return MaskDecider(pruning, index, task.model_structure).covered_keys
