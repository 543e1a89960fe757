"""Masks from element scores: unit scoring, sparsity allocation, 2:4 sparsity.

Graph-compatible: only TF ops on tensors; the structure's numpy arrays enter
as constants, the sparsity may be a Python float or a scalar tensor.

Sparsity is the fraction of the structure's kernel elements
(``UnitStructure.kernel_keys``) that are zero in the masks; biases and other
coupled weights are masked with their units but never counted.

Allocation (``distribution``):

* ``uniform``: every budget layer removes units until its own kernel
  sparsity is as close to the target as whole units allow, the same
  fraction of each kind of unit it holds (`group_rank_keys`), lowest scores
  first within each kind.
* ``global``: one ranking over all units, one parameter budget.
* ``adaptive``: one global ranking of *layer-normalized* scores, LAMP (Lee et
  al., ICLR 2021): ``s_u^2 / sum(s_v^2 for v in the same budget layer with
  s_v >= s_u)``. Chosen over dividing by the layer mean because (1) it is
  invariant to each layer's score scale (Taylor scores differ by orders of
  magnitude between layers, which makes plain ``global`` prune whole
  low-scale layers), (2) it depends on the shape of a layer's score
  distribution: a layer whose mass sits in few units, so that pruning its
  tail costs little, gets more sparsity, and larger layers get more sparsity
  than small ones, and (3) each layer's best unit scores exactly 1, so it is
  the last candidate anyway. The parameter-weighted mean sparsity is the
  target, as for ``global``.

In every distribution the best unit of each anchor group (``unit_group``) is
kept, so no layer is ever removed completely. The budget cut is the number of
lowest units whose removal brings the removed kernel elements closest to the
target (ties: fewer removed); elements shared by two units are counted once,
when their first unit is removed. Sorting is stable, so equal scores are
removed in unit-index order and identical inputs give identical masks.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Union

import numpy as np
import tensorflow as tf

from tff_prune.pruning.units import UnitStructure

DISTRIBUTIONS = ("uniform", "global", "adaptive")
Tensors = Mapping[str, tf.Tensor]
# Static Python control flow only: skip AutoGraph's conversion (halves trace time).
_no_autograph = tf.autograph.experimental.do_not_convert
Sparsity = Union[float, tf.Tensor]
_INF = float("inf")


# ----------------------------------------------------------------------------- static helpers


def _cache(structure: UnitStructure) -> dict:
    """Per-structure memo of numpy-only derived data (never tensors: a cached
    eager tensor could not be captured by a later graph-mode trace)."""
    return structure.__dict__.setdefault("_masks_cache", {})


def _static(values: np.ndarray, dtype: tf.DType) -> tf.Tensor:
    """A constant for a static per-unit array, run-length encoded when that is
    much smaller (layer and group ids, unit sizes come in long runs), so that
    graphs stay small for millions of units (unstructured pruning)."""
    values = np.asarray(values).reshape(-1)
    n = values.size
    if n > 1024:
        change = np.flatnonzero(values[1:] != values[:-1]) + 1
        if change.size + 1 <= n // 16:
            starts = np.concatenate([[0], change])
            counts = np.diff(np.append(starts, n))
            runs = tf.repeat(tf.constant(values[starts], dtype), tf.constant(counts, tf.int32))
            return tf.ensure_shape(runs, [n])
    return tf.constant(values, dtype)


def _id_tensor(structure: UnitStructure, key: str, ids: np.ndarray, which: int) -> tf.Tensor:
    """int32 unit ids with ``-1`` replaced by ``num_units`` (a sentinel slot).

    Stored compactly: a range when ids are consecutive (unstructured), else
    the array reduced along axes where it is constant (a column structure
    needs one id per column) and broadcast back.
    """
    memo = _cache(structure)
    tag = ("ids", key, which)
    if tag not in memo:
        flat = ids.reshape(-1)
        if flat.size > 0 and flat[0] >= 0 and bool(np.all(np.diff(flat) == 1)):
            memo[tag] = ("range", int(flat[0]))
        else:
            reduced = ids
            for axis in range(ids.ndim):
                first = reduced.take([0], axis=axis)
                if reduced.shape[axis] > 1 and np.array_equal(np.broadcast_to(first, reduced.shape), reduced):
                    reduced = first
            memo[tag] = ("array", np.where(reduced >= 0, reduced, structure.num_units).astype(np.int32))
    kind, value = memo[tag]
    if kind == "range":
        return tf.reshape(tf.range(value, value + ids.size, dtype=tf.int32), ids.shape)
    tensor = tf.constant(value)
    return tensor if value.shape == ids.shape else tf.broadcast_to(tensor, ids.shape)


def _memberships(structure: UnitStructure, key: str) -> list[tf.Tensor]:
    return [_id_tensor(structure, key, ids, i) for i, ids in enumerate(structure.memberships(key))]


def _layout(structure: UnitStructure, per_layer: bool) -> dict:
    """Static positions of budget layers in the (layer, key)-sorted unit order."""
    memo = _cache(structure)
    tag = ("layout", per_layer)
    if tag in memo:
        return memo[tag]
    n = structure.num_units
    if per_layer:
        layer = structure.unit_layer.astype(np.int64)
        budget_params = structure.layer_param_count.astype(np.float64)
    else:
        layer = np.zeros(n, np.int64)
        budget_params = np.array([float(structure.total_params)])
    num_layers = budget_params.shape[0]
    counts = np.bincount(layer, minlength=num_layers)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    pos_layer = np.repeat(np.arange(num_layers), counts)
    layer_of_group = np.zeros(structure.num_groups, np.int64)
    layer_of_group[structure.unit_group] = layer  # a group lies in one budget layer
    droppable_count = counts - np.bincount(layer_of_group, minlength=num_layers)
    # Largest one-unit step per layer: the rounding tolerance of a budget cut.
    by_layer = structure.unit_param_count[np.argsort(layer, kind="stable")].astype(np.float64)
    unit_step = np.maximum.reduceat(by_layer, starts) if n else np.zeros(num_layers)
    # Kernel elements that belong to one unit only, per unit (counted in O(units)).
    shared_keys = [k for k in structure.kernel_keys if k in structure.shared_unit_ids]
    solo_ids = [structure.unit_ids[k] for k in structure.kernel_keys if k not in structure.shared_unit_ids]
    solo_ids = np.concatenate([a[a >= 0] for a in solo_ids]) if solo_ids else np.zeros(0, np.int64)
    solo = np.bincount(solo_ids, minlength=n).astype(np.float64)
    memo[tag] = dict(layer=layer, num_layers=num_layers, budget_params=budget_params, starts=starts,
                     ends=starts + counts - 1, pos_layer=pos_layer, droppable_count=droppable_count,
                     unit_step=unit_step, solo=solo, shared_keys=shared_keys)
    return memo[tag]


def _check_distribution(distribution: str) -> None:
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")


def _sorted_order(keys: tf.Tensor, layer: Optional[np.ndarray]) -> tf.Tensor:
    """Unit indices sorted by (layer, key, index); both sorts are stable."""
    order = tf.argsort(keys, stable=True)
    if layer is not None and layer.size and layer.max() > 0:
        layer_f = _static(layer, tf.float64)
        order = tf.gather(order, tf.argsort(tf.gather(layer_f, order), stable=True))
    return order


# ----------------------------------------------------------------------------- unit scores


def _clean(score: tf.Tensor) -> tf.Tensor:
    """float32, non-finite -> 0 so that sorting stays deterministic after a divergence."""
    score = tf.cast(score, tf.float32)
    return tf.where(tf.math.is_finite(score), score, tf.zeros_like(score))


@_no_autograph
def unit_scores(scores: Tensors, structure: UnitStructure, reduce: str = "mean") -> tf.Tensor:
    """``float32 [num_units]``: mean (or max) of the element scores of each unit.

    The mean makes units of different sizes comparable. Every key of
    ``structure.unit_ids`` must be in ``scores``.
    """
    n = structure.num_units
    if reduce == "mean":
        total = tf.zeros([n + 1], tf.float32)
    elif reduce == "max":
        total = tf.fill([n + 1], tf.float32.min)
    else:
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    for key in structure.unit_ids:
        if key not in scores:
            raise KeyError(f"no scores for {key!r}")
        score = _clean(scores[key])
        score.shape.assert_is_compatible_with(structure.unit_ids[key].shape)
        flat = tf.reshape(score, [-1])
        for ids in _memberships(structure, key):
            ids = tf.reshape(ids, [-1])
            if reduce == "mean":
                total += tf.math.unsorted_segment_sum(flat, ids, n + 1)
            else:
                total = tf.maximum(total, tf.math.unsorted_segment_max(flat, ids, n + 1))
    if reduce == "mean":
        return total[:n] / _static(np.maximum(structure.unit_size, 1), tf.float32)
    return total[:n]


@_no_autograph
def lamp_keys(unit_score: tf.Tensor, structure: UnitStructure) -> tf.Tensor:
    """LAMP score of each unit within its budget layer (float64, in [0, 1])."""
    layout = _layout(structure, per_layer=True)
    score = tf.cast(unit_score, tf.float64)
    # Scale each layer to max 1 first (LAMP is scale-invariant per layer) so
    # the cross-layer cumulative sum below loses no precision.
    layer = _static(layout["layer"], tf.int32)
    layer_max = tf.math.unsorted_segment_max(score, layer, layout["num_layers"])
    score = tf.math.divide_no_nan(score, tf.gather(layer_max, layer))
    order = _sorted_order(score, layout["layer"])
    sq = tf.square(tf.gather(score, order))
    cum = tf.cumsum(sq)
    # Sum of squares from this position to the end of its layer (ascending order).
    pos_layer = _static(layout["pos_layer"], tf.int32)
    suffix = tf.gather(cum, tf.gather(tf.constant(layout["ends"], tf.int32), pos_layer)) - cum + sq
    lamp_sorted = tf.math.divide_no_nan(sq, suffix)
    return tf.gather(lamp_sorted, tf.math.invert_permutation(order))


@_no_autograph
def group_rank_keys(unit_score: tf.Tensor, structure: UnitStructure) -> tf.Tensor:
    """Uniform allocation's keys (float64, in ``(0, 1]``): each unit's rank
    among the units of its anchor group, lowest score first, as a fraction of
    the group's size.

    An anchor group is a kind of unit (the kernel and side that define it:
    a conv's output channels, a dense layer's columns). One budget layer can
    hold several kinds, e.g. a conv's output channels and the columns of the
    dense layer that reads them (coupled through the flatten), or a
    feed-forward's hidden units and its output columns. Their scores are not
    comparable (Taylor scores differ by orders of magnitude between kernels,
    magnitudes by the kernels' fan-in), and ranked together one kind can take
    the whole budget: on a random `medium` Conformer, magnitude removed 93 of
    the 144 subsampling-dense columns at 50% and only 16 of the 144 conv
    channels, which do the largest share of a step's arithmetic; in a
    trained `small` run, 70% of `ff_out`'s columns (residual-stream columns:
    bytes, but no arithmetic saved) and 30% of the hidden units. Ranked by
    these keys, a budget layer loses the same fraction of each of its
    kinds. Within one kind the order is the score order (ties: lower index
    first); a budget layer of one kind is cut exactly as by its scores.
    """
    group = structure.unit_group.astype(np.int64)
    counts = np.bincount(group, minlength=structure.num_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    order = _sorted_order(_clean(unit_score), group)
    rank = tf.cast(tf.math.invert_permutation(order), tf.float64) - _static(starts[group], tf.float64)
    return (rank + 1.0) / _static(counts[group], tf.float64)


def _one_kind_per_layer(structure: UnitStructure) -> bool:
    """Whether every budget layer holds units of a single anchor group."""
    memo = _cache(structure)
    if "one_kind" not in memo:
        pairs = np.unique(np.stack([structure.unit_layer, structure.unit_group]), axis=1)
        memo["one_kind"] = pairs.shape[1] == structure.num_layers
    return memo["one_kind"]


# ----------------------------------------------------------------------------- selection


def _protected(keys: tf.Tensor, structure: UnitStructure) -> tf.Tensor:
    """The best unit of each anchor group (ties: highest index, i.e. the unit
    that the stable ascending order would remove last anyway)."""
    group = _static(structure.unit_group, tf.int32)
    num_groups = structure.num_groups
    best = tf.math.unsorted_segment_max(keys, group, num_groups)
    index = tf.range(structure.num_units, dtype=tf.int32)
    candidates = tf.where(keys >= tf.gather(best, group), index, -1)
    last = tf.math.unsorted_segment_max(candidates, group, num_groups)
    return tf.equal(index, tf.gather(last, group))


@_no_autograph
def select_dropped(keys: tf.Tensor, structure: UnitStructure, sparsity: Sparsity, per_layer: bool,
                   majority_drop: Optional[tf.Tensor] = None) -> tf.Tensor:
    """``bool [num_units]``: units to remove, lowest ``keys`` first.

    ``per_layer``: one budget per budget layer (uniform) or one overall.
    ``majority_drop`` (votes): if removing exactly these droppable units
    meets a layer's budget within one unit's parameters, that cut is used
    (the lowest keys must be exactly these units).
    """
    n = structure.num_units
    if n == 0:
        return tf.zeros([0], tf.bool)
    layout = _layout(structure, per_layer)
    layer = _static(layout["layer"], tf.int32)
    pos_layer = _static(layout["pos_layer"], tf.int32)  # budget layer of each sorted position
    starts = tf.constant(layout["starts"], tf.int32)
    keys = tf.cast(keys, tf.float64)
    protected = _protected(keys, structure)
    order = _sorted_order(tf.where(protected, tf.constant(_INF, tf.float64), keys),
                          layout["layer"] if per_layer else None)
    pos = tf.math.invert_permutation(order)

    # Removed kernel elements when the first q+1 positions are dropped: each
    # element counts at the first position among its units.
    contrib = tf.math.unsorted_segment_sum(_static(layout["solo"], tf.float64), pos, n + 1)
    pos_ext = tf.concat([pos, [n]], 0)
    for key in layout["shared_keys"]:
        first = None
        for ids in _memberships(structure, key):
            p = tf.gather(pos_ext, ids)
            first = p if first is None else tf.minimum(first, p)
        contrib += tf.math.unsorted_segment_sum(tf.ones_like(first, tf.float64), first, n + 1)
    cum = tf.cumsum(contrib[:n])
    before = tf.concat([[0.0], cum], 0)
    q = tf.range(n, dtype=tf.int32)
    start_of_q = tf.gather(starts, pos_layer)
    within = cum - tf.gather(before, start_of_q)

    sparsity = tf.clip_by_value(tf.cast(sparsity, tf.float64), 0.0, 1.0)
    budget = sparsity * tf.constant(layout["budget_params"])
    err = tf.abs(within - tf.gather(budget, pos_layer))
    # Protected units sit at the end of each layer's run and are never cut.
    droppable = q - start_of_q < tf.gather(tf.constant(layout["droppable_count"], tf.int32), pos_layer)
    err = tf.where(droppable, err, tf.constant(_INF, tf.float64))
    min_err = tf.math.segment_min(err, pos_layer)
    best_q = tf.math.segment_min(tf.where(err <= tf.gather(min_err, pos_layer), q, n), pos_layer)
    cut = tf.where(budget <= min_err, starts - 1, best_q)  # last dropped position per layer

    if majority_drop is not None:
        wanted = tf.logical_and(tf.cast(majority_drop, tf.bool), tf.logical_not(protected))
        count = tf.math.unsorted_segment_sum(tf.cast(wanted, tf.int32), layer, layout["num_layers"])
        q_pref = starts + count - 1
        removed = tf.where(count > 0, tf.gather(within, tf.maximum(q_pref, 0)), tf.zeros_like(budget))
        close = tf.abs(removed - budget) <= tf.constant(layout["unit_step"])
        cut = tf.where(close, q_pref, cut)
    return pos <= tf.gather(cut, layer)


@_no_autograph
def unit_keep(scores: Tensors, structure: UnitStructure, sparsity: Sparsity,
              distribution: str) -> tf.Tensor:
    """``float32 [num_units]``, 1 for kept units, 0 for removed ones."""
    _check_distribution(distribution)
    score = unit_scores(scores, structure)
    keys = score
    if distribution == "adaptive":
        keys = lamp_keys(score, structure)
    elif distribution == "uniform" and not _one_kind_per_layer(structure):
        keys = group_rank_keys(score, structure)  # same order as `score` with one kind
    dropped = select_dropped(keys, structure, sparsity, per_layer=distribution == "uniform")
    return 1.0 - tf.cast(dropped, tf.float32)


@_no_autograph
def masks_from_unit_keep(keep: tf.Tensor, structure: UnitStructure) -> dict[str, tf.Tensor]:
    """Element masks (float32, weight-shaped) for every key of ``structure.unit_ids``;
    an element is kept iff all its units are kept."""
    keep_ext = tf.concat([tf.cast(keep, tf.float32), [1.0]], 0)
    masks = {}
    for key in structure.unit_ids:
        mask = None
        for ids in _memberships(structure, key):
            m = tf.gather(keep_ext, ids)
            mask = m if mask is None else mask * m
        masks[key] = mask
    return masks


@_no_autograph
def compute_masks(scores: Tensors, structure: UnitStructure, sparsity: Sparsity,
                  distribution: str) -> dict[str, tf.Tensor]:
    """Binary float32 masks for every key of ``structure.unit_ids`` (kernels and
    coupled biases / depthwise weights) at ``sparsity`` of the covered kernels."""
    return masks_from_unit_keep(unit_keep(scores, structure, sparsity, distribution), structure)


def mask_weight(value: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """THE masking of a weight (or its gradient, update or delta): ``value``
    with the coordinates ``mask`` prunes (0) set to zero, the rest as is.
    ``mask`` has ``value``'s shape or broadcasts to it."""
    return value * tf.cast(mask, value.dtype)


@_no_autograph
def apply_masks(weights: Tensors, masks: Tensors) -> dict[str, tf.Tensor]:
    """``mask_weight`` for masked keys; other weights pass through unchanged."""
    return {k: (mask_weight(w, masks[k]) if k in masks else w) for k, w in weights.items()}


# ----------------------------------------------------------------------------- m:n sparsity


@_no_autograph
def compute_m_by_n_masks(scores: Tensors, kernels: Iterable[str], m: int = 2,
                         n: int = 4, sparsity=None) -> dict[str, tf.Tensor]:
    """``m`` zeros in every ``n`` consecutive elements along axis -2 of each kernel.

    Axis -2 is the input dimension of Dense ``[in, out]`` and Conv2D
    ``[kh, kw, in, out]`` kernels and the channel axis of depthwise kernels
    ``[..., C, M]``: the axis tfmot groups (``weights_rearrange`` puts it last,
    TFLite's layout) and checks with ``is_pruned_m_by_n``. The lowest-scoring
    ``m`` of each group are removed (ties: the later index); a trailing
    partial group of ``g`` elements keeps ``min(g, n - m)``, like tfmot's
    zero padding. Full groups give sparsity exactly ``m / n``.

    ``sparsity`` (None: ``m / n``; a float or scalar tensor in ``[0, m / n]``)
    is how a schedule ramps up to m:n: only the fraction ``sparsity / (m / n)``
    of each kernel's groups, those whose ``m`` lowest scores sum lowest (the
    cheapest to prune), get their ``m`` zeros; the others stay dense. Every
    pruned group is already in m:n form, and at ``m / n`` all of them are.
    """
    if not 0 < m < n:
        raise ValueError(f"need 0 < m < n, got m={m}, n={n}")
    masks = {}
    for key in kernels:
        score = _clean(scores[key])
        rank = score.shape.rank
        if rank is None or rank < 2:
            raise ValueError(f"{key}: m_by_n needs a kernel of rank >= 2, got shape {score.shape}")
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]  # axis -2 last
        x = tf.transpose(score, perm)
        width = int(x.shape[-1])
        pad = (-width) % n
        x = tf.pad(x, [[0, 0]] * (rank - 1) + [[0, pad]], constant_values=-_INF)
        groups = tf.reshape(x, tf.concat([tf.shape(x)[:-1], [(width + pad) // n, n]], 0))
        order = tf.argsort(groups, axis=-1, direction="DESCENDING", stable=True)
        position = tf.argsort(order, axis=-1, stable=True)  # rank of each element in its group
        keep = position < n - m
        if sparsity is not None:
            keep = keep | _dense_groups(groups, keep, sparsity * n / m)[..., None]
        keep = tf.reshape(tf.cast(keep, tf.float32), tf.shape(x))[..., :width]
        masks[key] = tf.transpose(keep, perm)  # perm is its own inverse
    return masks


def _dense_groups(groups: tf.Tensor, keep: tf.Tensor, pruned_fraction) -> tf.Tensor:
    """Per group of ``groups`` ``[..., G, n]``: True where it stays dense, so
    that ``pruned_fraction`` of all groups (rounded) are pruned, cheapest
    first (lowest sum of the scores ``keep`` drops; padding costs nothing)."""
    cost = tf.reduce_sum(tf.where(keep | tf.math.is_inf(groups), 0.0, groups), axis=-1)
    flat = tf.reshape(cost, [-1])
    total = tf.size(flat)
    fraction = tf.clip_by_value(tf.cast(pruned_fraction, tf.float32), 0.0, 1.0)
    num_pruned = tf.cast(tf.round(fraction * tf.cast(total, tf.float32)), tf.int32)
    # Rank of each group by cost (ties: the earlier group is pruned first).
    rank = tf.argsort(tf.argsort(flat, stable=True), stable=True)
    return tf.reshape(rank >= num_pruned, tf.shape(cost))
