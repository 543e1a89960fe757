"""LAMB (Adam with a layer-wise trust ratio) as a `tff.learning.optimizers.Optimizer`.

You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76
minutes" (ICLR 2020), Algorithm 2 with phi the identity, as TensorFlow
Addons' `LAMB` implements it; among server optimizers for federated ASR,
Pelikan et al. (arXiv 2310.00098) found it the best. Per weight tensor `w`
with gradient `g`, at step `t` (1 on the first `next`):

    m = beta_1 * m + (1 - beta_1) * g
    v = beta_2 * v + (1 - beta_2) * g**2
    r = (m / (1 - beta_1**t)) / (sqrt(v / (1 - beta_2**t)) + epsilon) + weight_decay * w
    trust = ||w|| / ||r||      (1 where either norm is 0)
    w = w - learning_rate * trust * r

The trust ratio makes each tensor's step `learning_rate` times its own norm,
whatever the scale of its gradient: on the server, whose pseudo-gradient is
the clients' averaged delta, layers whose deltas are tiny still move.

The state is a flat `OrderedDict` of tensors (hyperparameters, step, both
moments), so it checkpoints and resumes like TFF's own Adam's.
"""

from __future__ import annotations

import collections
from typing import Any

import tensorflow as tf
from tensorflow_federated.python.common_libs import structure
from tensorflow_federated.python.learning.optimizers import nest_utils
from tensorflow_federated.python.learning.optimizers import optimizer

LEARNING_RATE_KEY = optimizer.LEARNING_RATE_KEY
BETA_1_KEY = "beta_1"
BETA_2_KEY = "beta_2"
EPSILON_KEY = "epsilon"
WEIGHT_DECAY_KEY = "weight_decay"
STEP_KEY = "step"
FIRST_MOMENT_KEY = "accumulator"       # TFF's Adam's names for m and v
SECOND_MOMENT_KEY = "preconditioner"
HPARAMS_KEYS = (LEARNING_RATE_KEY, BETA_1_KEY, BETA_2_KEY, EPSILON_KEY, WEIGHT_DECAY_KEY)


def trust_ratio(weight_norm: tf.Tensor, update_norm: tf.Tensor) -> tf.Tensor:
    """||w|| / ||r||, or 1 where either norm is 0 (a zero tensor, or no update)."""
    usable = tf.logical_and(weight_norm > 0, update_norm > 0)
    return tf.where(usable, weight_norm / tf.where(usable, update_norm, 1.0), 1.0)


class Lamb(optimizer.Optimizer):
    """LAMB; see the module docstring and `build_lamb`."""

    def __init__(self, learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-6, weight_decay: float = 0.0):
        for name, value, low, high in (("learning_rate", learning_rate, 0.0, None),
                                       ("beta_1", beta_1, 0.0, 1.0),
                                       ("beta_2", beta_2, 0.0, 1.0),
                                       ("epsilon", epsilon, 0.0, None),
                                       ("weight_decay", weight_decay, 0.0, None)):
            if tf.is_symbolic_tensor(value):
                continue
            if value < low or (high is not None and value > high):
                bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
                raise ValueError(f"LAMB `{name}` must be {bounds}, found {value}.")
        self._hparams = collections.OrderedDict(zip(
            HPARAMS_KEYS, (learning_rate, beta_1, beta_2, epsilon, weight_decay)))

    def initialize(self, specs: Any) -> collections.OrderedDict:
        def zeros():
            return tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), specs)
        return collections.OrderedDict([
            *self._hparams.items(),
            (STEP_KEY, 0),
            (FIRST_MOMENT_KEY, zeros()),
            (SECOND_MOMENT_KEY, zeros()),
        ])

    def next(self, state: collections.OrderedDict, weights: Any, gradients: Any
             ) -> tuple[collections.OrderedDict, Any]:
        gradients = optimizer.handle_indexed_slices_gradients(gradients)
        optimizer.check_weights_gradients_match(weights, gradients)
        optimizer.check_weights_state_match(weights, state[FIRST_MOMENT_KEY], "first moment")
        optimizer.check_weights_state_match(weights, state[SECOND_MOMENT_KEY], "second moment")
        lr, beta_1, beta_2, epsilon, weight_decay = (state[k] for k in HPARAMS_KEYS)
        step = state[STEP_KEY] + 1

        def update(w, m, v, g):
            if g is None:
                return w, m, v
            dtype = w.dtype
            b1, b2 = tf.cast(beta_1, dtype), tf.cast(beta_2, dtype)
            t = tf.cast(step, dtype)
            m = b1 * m + (1.0 - b1) * g
            v = b2 * v + (1.0 - b2) * tf.math.square(g)
            m_hat = m / (1.0 - tf.math.pow(b1, t))
            v_hat = v / (1.0 - tf.math.pow(b2, t))
            r = m_hat / (tf.math.sqrt(v_hat) + tf.cast(epsilon, dtype)) \
                + tf.cast(weight_decay, dtype) * w
            trust = trust_ratio(tf.norm(w), tf.norm(r))
            return w - tf.cast(lr, dtype) * trust * r, m, v

        new_weights, first, second = nest_utils.map_at_leaves(
            update, weights, state[FIRST_MOMENT_KEY], state[SECOND_MOMENT_KEY], gradients,
            num_outputs=3)
        return collections.OrderedDict([
            *zip(HPARAMS_KEYS, (lr, beta_1, beta_2, epsilon, weight_decay)),
            (STEP_KEY, step),
            (FIRST_MOMENT_KEY, first),
            (SECOND_MOMENT_KEY, second),
        ]), new_weights

    def get_hparams(self, state: collections.OrderedDict) -> collections.OrderedDict:
        return collections.OrderedDict((k, state[k]) for k in HPARAMS_KEYS)

    def set_hparams(self, state: collections.OrderedDict,
                    hparams: collections.OrderedDict) -> collections.OrderedDict:
        return structure.update_struct(state, **hparams)


def build_lamb(learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.999,
               epsilon: float = 1e-6, weight_decay: float = 0.0) -> optimizer.Optimizer:
    """A `tff.learning.optimizers.Optimizer` for LAMB (module docstring):
    Adam's moments and bias correction, each tensor's step scaled by the
    trust ratio ||w|| / ||r||; `weight_decay` adds `weight_decay * w` to r."""
    return Lamb(learning_rate, beta_1, beta_2, epsilon, weight_decay)
