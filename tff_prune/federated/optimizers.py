"""Client and server optimizers by flag name, and learning rates over rounds.

Server optimizers follow Reddi et al., "Adaptive Federated Optimization"
(ICLR 2021): the server applies the averaged client delta as a
pseudo-gradient with SGD (plain FedAvg at learning rate 1), SGD with
momentum, Adam (FedAdam) or Yogi (FedYogi); for the adaptive ones the
paper's adaptivity τ is the optimizers' epsilon (1e-3 there, against
Keras' 1e-7, which turns Adam into sign descent on small pseudo-gradients).
LAMB (`tff_prune.federated.lamb`: Adam with a per-tensor trust ratio) is the
server optimizer Pelikan et al. found best for federated ASR (arXiv 2310.00098).

A `LearningRateSchedule` gives the learning rate of each round (1-based):
the server's through `tff.learning.optimizers.schedule_learning_rate` (its
step count, kept in the checkpointed optimizer state, is the round), the
clients' through the process's hyperparameters, set before every round
(`set_round_learning_rate`), so a resumed run uses exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import math
from typing import Any, Union

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.federated import lamb
from tff_prune.pruning import config as config_lib

OPTIMIZERS = ("sgd", "sgdm", "adam", "yogi", "lamb")
LR_SCHEDULES = ("constant", "exponential", "warmup_cosine")

Round = Union[int, tf.Tensor]


def build_optimizer(name: str, learning_rate: float, momentum: float = 0.9,
                    epsilon: float = 1e-7) -> tff.learning.optimizers.Optimizer:
    """A `tff.learning.optimizers` optimizer by flag name (`momentum`: sgdm
    only; `epsilon`: adam, yogi and lamb only)."""
    if name == "sgd":
        return tff.learning.optimizers.build_sgdm(learning_rate)
    if name == "sgdm":
        return tff.learning.optimizers.build_sgdm(learning_rate, momentum=momentum)
    if name == "adam":
        return tff.learning.optimizers.build_adam(learning_rate, epsilon=epsilon)
    if name == "yogi":
        return tff.learning.optimizers.build_yogi(learning_rate, epsilon=epsilon)
    if name == "lamb":
        return lamb.build_lamb(learning_rate, epsilon=epsilon)
    raise config_lib.ConfigError(f"optimizer {name!r} is not one of: {', '.join(OPTIMIZERS)}")


# Where a run recorded no client optimizer (older summaries).
DEFAULT_CLIENT_OPTIMIZER = ("sgd", 0.01)


def client_optimizer_of(federated_config: collections.abc.Mapping[str, Any]
                        ) -> tff.learning.optimizers.Optimizer:
    """A run's client optimizer at its base rate, from its recorded federated
    config (``summary.json``'s ``config.federated``; SGD 0.01 when it has none):
    what the export's on-device training artifact trains with."""
    name, rate = DEFAULT_CLIENT_OPTIMIZER
    return build_optimizer(federated_config.get("client_optimizer", name),
                           federated_config.get("client_learning_rate", rate))


@dataclasses.dataclass(frozen=True)
class LearningRateSchedule:
    """The learning rate of round r (1-based), from `base`.

    * warm-up: ``base * r / (warmup_rounds + 1)`` for ``r <= warmup_rounds``;
    * then ``constant``: ``base``; ``exponential``: ``base * decay_rate **
      (r - warmup_rounds - 1)``; ``warmup_cosine``: cosine from ``base``
      at the first round after the warm-up towards 0 after ``total_rounds``.
    """

    kind: str = "constant"
    base: float = 1.0
    warmup_rounds: int = 0
    decay_rate: float = 1.0
    total_rounds: int = 1
    # How errors name the settings, e.g. "--client_lr_" for the flags.
    names: str = dataclasses.field(default="", compare=False, repr=False)

    def __post_init__(self):
        n = self.names
        if self.kind not in LR_SCHEDULES:
            raise config_lib.ConfigError(
                f"{n}schedule={self.kind!r} is not one of: {', '.join(LR_SCHEDULES)}")
        if not self.base > 0:
            raise config_lib.ConfigError(f"learning rate must be > 0, not {self.base}")
        if self.warmup_rounds < 0:
            raise config_lib.ConfigError(
                f"{n}warmup_rounds must be >= 0, not {self.warmup_rounds}")
        if not 0 < self.decay_rate <= 1:
            raise config_lib.ConfigError(
                f"{n}decay_rate must be in (0, 1], not {self.decay_rate}")
        if self.kind == "warmup_cosine" and self.warmup_rounds >= self.total_rounds:
            raise config_lib.ConfigError(
                f"{n}warmup_rounds ({self.warmup_rounds}) must end before the last round "
                f"({self.total_rounds}) for a cosine schedule")

    @property
    def is_constant(self) -> bool:
        return self.kind == "constant" and self.warmup_rounds == 0

    def __call__(self, round_num: Round) -> Union[float, tf.Tensor]:
        """The rate of `round_num`: a float for an int, a float32 tensor for a tensor."""
        if not tf.is_tensor(round_num):
            return float(self(tf.constant(int(round_num), tf.int64)))
        r = tf.cast(round_num, tf.float32)
        warmup = float(self.warmup_rounds)
        after = tf.maximum(r - warmup - 1.0, 0.0)  # rounds since the warm-up ended
        if self.kind == "exponential":
            rate = self.base * tf.pow(self.decay_rate, after)
        elif self.kind == "warmup_cosine":
            span = float(self.total_rounds - self.warmup_rounds)
            progress = tf.minimum(after / span, 1.0)
            rate = self.base * 0.5 * (1.0 + tf.cos(math.pi * progress))
        else:
            rate = tf.constant(self.base, tf.float32)
        if self.warmup_rounds > 0:
            rate = tf.where(r <= warmup, self.base * r / (warmup + 1.0), rate)
        return tf.cast(rate, tf.float32)


def scheduled(optimizer: tff.learning.optimizers.Optimizer,
              schedule: LearningRateSchedule) -> tff.learning.optimizers.Optimizer:
    """`optimizer` at `schedule`'s rate for its i-th `next` (round i + 1): for
    the server, whose optimizer steps once a round."""
    if schedule.is_constant:
        return optimizer
    return tff.learning.optimizers.schedule_learning_rate(
        optimizer, lambda step: schedule(tf.cast(step, tf.int64) + 1))


def set_round_learning_rate(state: tff.learning.templates.LearningAlgorithmState,
                            schedule: LearningRateSchedule, round_num: int
                            ) -> tff.learning.templates.LearningAlgorithmState:
    """`state` with the clients' learning rate of `round_num` (a no-op for a
    constant schedule, whose rate the optimizer already has).

    For a process whose client work state is the client optimizer's
    hyperparameters (`client_work.build_pruning_client_work`'s, and what
    its `set_hparams` sets): set here, not by the process's `set_hparams`,
    which would ship the whole state to the worker and back for one scalar.
    """
    if schedule.is_constant:
        return state
    hparams = collections.OrderedDict(state.client_work)
    hparams[tff.learning.optimizers.LEARNING_RATE_KEY] = np.float32(schedule(round_num))
    return state._replace(client_work=hparams)


def client_learning_rate(state: tff.learning.templates.LearningAlgorithmState) -> float:
    """The clients' learning rate the next round of `state` runs at (read
    from the state, as `set_round_learning_rate` sets it)."""
    return learning_rate_of(state.client_work)


def learning_rate_of(optimizer_state: Any) -> float:
    """The learning rate a `tff.learning.optimizers` state holds (also inside
    `schedule_learning_rate`'s state): the rate of the optimizer's next step."""
    if isinstance(optimizer_state, collections.abc.Mapping):
        if tff.learning.optimizers.LEARNING_RATE_KEY in optimizer_state:
            return float(optimizer_state[tff.learning.optimizers.LEARNING_RATE_KEY])
        if "optimizer" in optimizer_state:
            return learning_rate_of(optimizer_state["optimizer"])
    raise KeyError(f"no learning rate in optimizer state {type(optimizer_state).__name__}")
