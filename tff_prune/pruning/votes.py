"""The ``client_vote`` mask policy: clients propose masks, the server takes a vote.

Every client computes a mask with the same structure and sparsity on its
locally trained weights; the server aggregates the example-weighted mean of
the binary masks, ``vote_fraction`` (per element, the weighted fraction of
clients that keep it), and turns it back into a mask with
:func:`masks_from_votes`.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import tensorflow as tf

from tff_prune.pruning import masks as masks_lib
from tff_prune.pruning.units import UnitStructure

Tensors = Mapping[str, tf.Tensor]
# Static Python control flow only: skip AutoGraph's conversion (halves trace time).
_no_autograph = tf.autograph.experimental.do_not_convert


def average_masks(client_masks: Sequence[Tensors], weights: Optional[Sequence[float]] = None) -> dict:
    """Weighted mean of binary masks (what the server's mean aggregation computes)."""
    if not client_masks:
        raise ValueError("need at least one client mask")
    w = [1.0] * len(client_masks) if weights is None else [float(x) for x in weights]
    total = sum(w)
    return {k: tf.add_n([wi * tf.cast(m[k], tf.float32) for wi, m in zip(w, client_masks)]) / total
            for k in client_masks[0]}


@_no_autograph
def unit_votes(vote_fraction: Tensors, structure: UnitStructure) -> tf.Tensor:
    """``float32 [num_units]``: the weighted fraction of clients that kept each unit.

    Each client keeps or removes a unit as a whole, so every element that
    belongs to this unit only carries exactly that fraction. Elements shared
    with a second unit carry the fraction keeping *both*, which is lower, so
    the maximum over the unit's elements (not the mean) recovers the unit's
    vote; for partitions (no shared elements) max and mean coincide.
    """
    return masks_lib.unit_scores(vote_fraction, structure, reduce="max")


@_no_autograph
def masks_from_votes(vote_fraction: Tensors, tie_break_scores: Tensors, structure: UnitStructure,
                     sparsity, distribution: str) -> dict[str, tf.Tensor]:
    """Server masks from client votes, at ``sparsity``.

    Units are ranked by their vote, ties broken by the mean tie-break score
    (e.g. the server model's magnitude), then by unit index: the limit
    ``eps -> 0`` of ``vote + eps * normalized_tie_break``, computed with two
    stable sorts so that no float resolution is lost between close votes.
    If removing exactly the units a weighted majority removed (vote < 0.5)
    meets the budget within one unit, those are removed: with identical
    client masks this reproduces them exactly and with disagreeing clients
    the majority wins. Otherwise the budget is filled in vote order.

    ``adaptive`` ranks the votes globally: the clients' adaptive per-layer
    allocation is already in the votes (which share one [0, 1] scale), and
    re-normalizing them per layer would distort it.
    """
    masks_lib._check_distribution(distribution)
    vote = unit_votes(vote_fraction, structure)
    tie_break = masks_lib.unit_scores(tie_break_scores, structure)
    order = tf.argsort(tie_break, stable=True)
    order = tf.gather(order, tf.argsort(tf.gather(vote, order), stable=True))
    keys = tf.cast(tf.math.invert_permutation(order), tf.float64)  # rank by (vote, tie-break, index)
    dropped = masks_lib.select_dropped(keys, structure, sparsity, per_layer=distribution == "uniform",
                                       majority_drop=vote < 0.5)
    return masks_lib.masks_from_unit_keep(1.0 - tf.cast(dropped, tf.float32), structure)


@_no_autograph
def mask_agreement(vote_fraction: Tensors, masks: Tensors) -> tf.Tensor:
    """Weighted fraction of (client, element) decisions that match the final mask.

    Per element ``vote`` where the mask keeps it and ``1 - vote`` where it
    removes it, averaged over all elements of the keys in ``masks``. 1.0:
    every client proposed exactly the final mask; with two equally weighted
    clients proposing disjoint removals at sparsity ``s``, about ``1 - s``.
    """
    agree, count = 0.0, 0
    for key, mask in masks.items():
        m = tf.cast(mask, tf.float32)
        v = tf.cast(vote_fraction[key], tf.float32)
        agree += tf.reduce_sum(m * v + (1.0 - m) * (1.0 - v))
        count += int(m.shape.num_elements())
    return tf.cast(agree, tf.float32) / float(max(count, 1))
