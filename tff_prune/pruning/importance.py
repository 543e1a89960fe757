"""Per-element importance scores (structures aggregate them into unit scores).

* magnitude: ``|w|``.
* Taylor (first order, Molchanov et al. 2019): ``|w * dL/dw|``, the estimated
  change of the loss when the element is zeroed. A client sums it over its
  local steps with the accumulator helpers; the server averages the sums
  (weighted like the model update), so the scores reflect all clients' data.

All functions are graph-compatible and map ``{key: tensor}`` to ``{key: float32 tensor}``.
"""

from __future__ import annotations

from typing import Mapping, Optional

import tensorflow as tf

METHODS = ("magnitude", "taylor")
Tensors = Mapping[str, tf.Tensor]


def _dense(grad, like):
    """Gradients may be None (unused weight) or IndexedSlices (embedding-like)."""
    if grad is None:
        return tf.zeros_like(like, tf.float32)
    return tf.cast(tf.convert_to_tensor(grad), tf.float32)


def magnitude_scores(weights: Tensors) -> dict[str, tf.Tensor]:
    """``|w|`` per element."""
    return {k: tf.abs(tf.cast(w, tf.float32)) for k, w in weights.items()}


def taylor_scores(weights: Tensors, grads: Mapping[str, Optional[tf.Tensor]]) -> dict[str, tf.Tensor]:
    """``|w * g|`` per element for one gradient (keys of ``weights``)."""
    return {k: tf.abs(tf.cast(w, tf.float32) * _dense(grads.get(k), w)) for k, w in weights.items()}


def init_taylor_accumulator(weights: Tensors) -> dict[str, tf.Tensor]:
    """Zero sums, one per weight (the starting state of a client's local loop)."""
    return {k: tf.zeros_like(w, tf.float32) for k, w in weights.items()}


def accumulate_taylor(accumulator: Tensors, weights: Tensors,
                      grads: Mapping[str, Optional[tf.Tensor]]) -> dict[str, tf.Tensor]:
    """``accumulator + |w * g|``; call once per local step with that step's gradient."""
    step = taylor_scores({k: weights[k] for k in accumulator}, grads)
    return {k: accumulator[k] + step[k] for k in accumulator}


def finalize_taylor(accumulator: Tensors, num_steps) -> dict[str, tf.Tensor]:
    """Mean per step (so clients with more steps do not dominate by step count;
    the server's example weighting already accounts for data size)."""
    steps = tf.maximum(tf.cast(num_steps, tf.float32), 1.0)
    return {k: a / steps for k, a in accumulator.items()}


def element_scores(method: str, weights: Tensors, taylor: Optional[Tensors] = None) -> dict[str, tf.Tensor]:
    """Scores by name: ``magnitude`` from ``weights``; ``taylor`` returns the
    (server-averaged) accumulated Taylor scores, which must be given."""
    if method == "magnitude":
        return magnitude_scores(weights)
    if method == "taylor":
        if taylor is None:
            raise ValueError("taylor importance needs the accumulated |w * dL/dw| scores")
        return {k: tf.cast(taylor[k], tf.float32) for k in weights}
    raise ValueError(f"importance must be one of {METHODS}, got {method!r}")
