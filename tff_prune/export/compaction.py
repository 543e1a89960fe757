"""Compaction machinery: cutting provably inert units out of a masked model.

Structured pruning leaves whole units exactly zero. A unit whose removal
cannot change any output is cut out of the kernels, and the task rebuilds its
model with the smaller widths (same layer names, smaller kernels; a task's
`tff_prune.task.base.Compactor` does that, e.g. the ASR task's). Removability
is decided from the weights themselves, so any checkpoint works and nothing
is removed unless it is provably inert.

Which slices form one unit (and are cut together) comes from the task's
`tff_prune.task.base.ModelStructure` couplings, the one definition pruning uses too
(`couplings_by_layers`). The generic rules here:

* A kernel's *columns* are its outputs (last axis), its *rows* its inputs
  (the axis before: Dense rows, Conv2D input channels, DepthwiseConv2D
  channels). A column slice includes its bias entry.
* A unit of coupling ``a -> b`` is inert when its ``a`` slice is zero
  (nothing flows in: the activation must map 0 to 0) or all its ``b`` slices
  are zero (nothing flows out): `either_zero`. Whether an activation or a
  normalization between ``a`` and ``b`` keeps that exact is the task's rule.
* At least one unit of each kind survives (a zero unit if need be): Keras
  layers cannot have width 0, and one inert unit costs nothing in exactness
  (`keep_indices`).

A compacted model is checked against the masked one on a task-shaped batch
(`max_output_difference`, `check_equivalence`) before anything is written.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import numpy as np
import tensorflow as tf

from tff_prune.pruning import units
from tff_prune.task import base

Couplings = dict[tuple[str, str], units.Coupling]


@dataclasses.dataclass(frozen=True)
class CompactionReport:
    """What compaction removed and what it left.

    ``widths`` is the task's widths object (what its compactor's ``build``
    takes); `to_json` uses its ``to_json()`` when it has one.
    """

    dense_params: int
    compact_params: int
    removed: dict[str, int]  # units removed per kind
    widths: Any

    @property
    def param_ratio(self) -> float:
        """compact / dense parameter count."""
        return self.compact_params / self.dense_params

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly dict (stored in the export's metadata)."""
        return {"dense_params": self.dense_params, "compact_params": self.compact_params,
                "removed": dict(self.removed), "widths": widths_json(self.widths)}


def widths_json(widths: Any) -> Any:
    """A widths object as JSON: its ``to_json()``, a dataclass's fields, else str."""
    if hasattr(widths, "to_json"):
        return widths.to_json()
    if dataclasses.is_dataclass(widths) and not isinstance(widths, type):
        return dataclasses.asdict(widths)
    return str(widths)


def count_parameters(model: tf.keras.Model, trainable_only: bool = True) -> int:
    """Number of scalar parameters (trainable ones by default)."""
    weights = model.trainable_weights if trainable_only else model.weights
    return int(sum(np.prod(w.shape) for w in weights))


# ----------------------------------------------------------------------------- slices


def zero_slices(a: np.ndarray, axis: int) -> np.ndarray:
    """Per index along ``axis``: is the whole slice exactly zero."""
    other = tuple(i for i in range(a.ndim) if i != axis % a.ndim)
    return np.all(a == 0, axis=other)


def keep_indices(removable: np.ndarray) -> np.ndarray:
    """Indices to keep (sorted); at least one, the first, if all are removable."""
    keep = np.flatnonzero(~removable)
    return keep if keep.size else np.array([0])


def axis_of(side: str) -> int:
    """The kernel axis of a coupling side."""
    # Columns are a kernel's outputs (last axis), rows its inputs (the axis
    # before: Dense rows, Conv2D input channels, DepthwiseConv2D channels).
    return -1 if side == "col" else -2


def side_zero(weights: list, side: str, index: np.ndarray) -> np.ndarray:
    """Per entry of ``index``: is that slice zero (a column with its bias)."""
    kernel = weights[0]
    zero = zero_slices(kernel, axis_of(side))[index]
    if side == "col" and len(weights) > 1:
        zero &= weights[1][index] == 0
    return zero


def take(weights: list, side: str, index: np.ndarray) -> list:
    """``weights`` ([kernel, bias]) keeping slices ``index`` of ``side``."""
    kernel = np.take(weights[0], index, axis=axis_of(side))
    if side == "col" and len(weights) > 1:
        return [kernel, weights[1][index], *weights[2:]]
    return [kernel, *weights[1:]]


# ----------------------------------------------------------------------------- couplings


def couplings_by_layers(model: tf.keras.Model,
                        model_structure: base.ModelStructure) -> Couplings:
    """The model's unit couplings (``model_structure``'s, the one definition of
    what is pruned together), keyed by (layer a, layer b)."""
    shapes = {}
    for layer in model.layers:
        attr = ("depthwise_kernel" if isinstance(layer, tf.keras.layers.DepthwiseConv2D)
                else "kernel")
        if getattr(layer, attr, None) is not None:
            shapes[f"{layer.name}/{attr}"] = tuple(getattr(layer, attr).shape.as_list())
    return {(c.a, c.b): c for c in model_structure.couplings(shapes)}


def coupling(couplings: Mapping[tuple[str, str], units.Coupling], a: str, b: str
             ) -> units.Coupling:
    """The coupling ``a -> b``; ValueError if the model structure declares none."""
    if (a, b) not in couplings:
        raise ValueError(f"no unit coupling {a} -> {b} in the task's model structure")
    return couplings[(a, b)]


def b_index(c: units.Coupling, keep: np.ndarray) -> np.ndarray:
    """The slices of layer ``c.b`` that go with the kept units ``keep`` of ``c.a``."""
    return np.asarray(c.b_index)[np.isin(c.a_index, keep)]


def either_zero(w: Mapping[str, list], c: units.Coupling) -> np.ndarray:
    """Per unit (``c.a`` slice): inert when its ``a`` slice or all its ``b``
    slices are zero (nothing flows in, or nothing flows out)."""
    unit_ids = np.unique(c.a_index)
    a_zero = side_zero(w[c.a], c.a_side, unit_ids)
    b_zero = side_zero(w[c.b], c.b_side, np.asarray(c.b_index))
    return a_zero | np.array([np.all(b_zero[c.a_index == u]) for u in unit_ids])


def cut(w: Mapping[str, list], new: dict, c: units.Coupling, keep: np.ndarray) -> None:
    """Keeps only units ``keep`` on both sides of coupling ``c`` (into ``new``)."""
    new[c.a] = take(new.get(c.a, w[c.a]), c.a_side, keep)
    new[c.b] = take(new.get(c.b, w[c.b]), c.b_side, b_index(c, keep))


def compact(compactor: base.Compactor, model: tf.keras.Model
            ) -> tuple[tf.keras.Model, CompactionReport]:
    """``compactor.compact(model)`` and its report.

    A compactor may also offer ``compact_with_report(model) -> (model,
    CompactionReport)`` (units removed per kind, e.g. the Conformer's); others
    report parameter counts and widths only.
    """
    with_report = getattr(compactor, "compact_with_report", None)
    if with_report is not None:
        return with_report(model)
    compact_model, widths = compactor.compact(model)
    return compact_model, CompactionReport(
        dense_params=count_parameters(model), compact_params=count_parameters(compact_model),
        removed={}, widths=widths)


# ----------------------------------------------------------------------------- equivalence


def max_output_difference(a: tf.keras.Model, b: tf.keras.Model, inputs: Any,
                          output_lengths: Optional[Any] = None) -> float:
    """max |out_a - out_b| on ``inputs``; with ``output_lengths`` (one per
    example) only over each example's first ``n`` (valid) output frames."""
    oa = a(inputs, training=False).numpy()
    ob = b(inputs, training=False).numpy()
    if output_lengths is None:
        return float(np.max(np.abs(oa - ob))) if oa.size else 0.0
    worst = 0.0
    for i, n in enumerate(np.asarray(output_lengths)):
        if n:
            worst = max(worst, float(np.max(np.abs(oa[i, :n] - ob[i, :n]))))
    return worst


def check_equivalence(diff: float, tolerance: float = 1e-4, what: str = "logit") -> float:
    """Raises AssertionError unless ``diff < tolerance``; returns ``diff``."""
    if not diff < tolerance:
        raise AssertionError(f"compact model differs from the masked one: max |{what} diff| "
                             f"{diff:.3g} >= {tolerance:g}")
    return diff
