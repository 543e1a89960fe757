"""Per-element importance scores (structures aggregate them into unit scores).

* magnitude: ``|w|``.
* Taylor (first order, Molchanov et al. 2019): ``|w * dL/dw|``, the estimated
  change of the loss when the element is zeroed. THE definition, used by the
  federated clients (client_work.py) and centralized training
  (centralized/pruner.py) alike: the MEAN over the local optimizer steps of
  one round of ``|w * g_t|``, with ``w`` the dense weight at the start of the
  round (the broadcast value, so pruned weights are scored as if they came
  back) and ``g_t`` step t's gradient. Only the round that precedes a mask
  update counts: sums start at zero every round. The server averages the
  clients' means example-weighted (like the model update); a centralized
  round is one federated round of one client. Being a mean, the score does
  not grow with the number of steps or examples.

All functions are graph-compatible. The Taylor accumulator helpers take either
``{key: tensor}`` mappings or equal-length sequences of tensors.
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


def init_taylor_accumulator(weights):
    """Zero sums, one per weight (the starting state of a round's local loop)."""
    if isinstance(weights, Mapping):
        return {k: tf.zeros_like(w, tf.float32) for k, w in weights.items()}
    # A tuple, not a list: autograph would stage a list loop variable as a TensorArray.
    return tuple(tf.zeros_like(w, tf.float32) for w in weights)


def taylor_step(weights, grads):
    """``|w * g|`` for one step; ``weights`` and ``grads`` are mappings (grads may
    miss keys) or equal-length sequences (grads may hold None)."""
    if isinstance(weights, Mapping):
        return taylor_scores(weights, grads)
    return [tf.abs(tf.cast(w, tf.float32) * _dense(g, w)) for w, g in zip(weights, grads)]


def accumulate_taylor(accumulator, weights, grads):
    """``accumulator + |w * g|``; call once per local step with that step's gradient."""
    if isinstance(accumulator, Mapping):
        step = taylor_step({k: weights[k] for k in accumulator}, grads)
        return {k: accumulator[k] + step[k] for k in accumulator}
    return tuple(a + s for a, s in zip(accumulator, taylor_step(weights, grads)))


def finalize_taylor(accumulator, num_steps):
    """Mean per step (so clients with more steps do not dominate by step count;
    the server's example weighting already accounts for data size)."""
    steps = tf.maximum(tf.cast(num_steps, tf.float32), 1.0)
    return tf.nest.map_structure(lambda a: a / steps, accumulator)


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
