"""Sparsity over federated *rounds* (not optimizer steps).

A schedule splits training into four phases::

    round <  begin_round                          'dense'       no masks
    begin_round <= round <= end_round             'pruning'     sparsity ramps up
    end_round < round <= end_round + refine_rounds 'refinement' masks recomputed at target
    round > end_round + refine_rounds             'finetune'    masks frozen

Masks are (re)computed on the grid ``begin_round + k * every_rounds`` during
pruning and refinement; between grid rounds the sparsity is held, like tfmot's
``PruningSchedule`` which only acts every ``frequency`` steps.

Every method accepts a Python int (returns Python values) or an integer
tensor (returns tensors built from graph-compatible ops, for use inside
``tff.tensorflow.computation`` where the round number is a tensor).
"""

from __future__ import annotations

from typing import Union

import numpy as np
import tensorflow as tf

KINDS = ("constant", "step", "polynomial")
PHASES = ("dense", "pruning", "refinement", "finetune")

Round = Union[int, np.integer, tf.Tensor]


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class PruningSchedule:
    """Target sparsity and mask-update rounds over federated training.

    Sparsity per kind (``k`` = index of the last mask update, ``n`` = number of
    updates in the pruning phase, ``n = (end - begin) // every + 1``):

    * ``constant``: ``target`` from ``begin_round`` on (``initial_sparsity``
      is ignored).
    * ``step``: ``initial + (target - initial) * (k + 1) / n``: equal
      increments at each update, reaching ``target`` at ``end_round``.
    * ``polynomial``: tfmot ``PolynomialDecay`` evaluated at the last update
      round ``r``: ``target + (initial - target) * (1 - p) ** power`` with
      ``p = clip((r - begin) / (end - begin), 0, 1)`` (``p = 1`` when
      ``end == begin``).

    Dense rounds have sparsity 0; refinement and finetune hold ``target``.
    ``end_round - begin_round`` must be a multiple of ``every_rounds`` so that
    ``end_round`` itself is an update round and the target is really reached.
    """

    def __init__(
        self,
        kind: str,
        target_sparsity: float,
        begin_round: int,
        end_round: int,
        every_rounds: int = 1,
        refine_rounds: int = 0,
        initial_sparsity: float = 0.0,
        power: float = 3,
    ):
        self.kind = kind
        self.target_sparsity = target_sparsity
        self.begin_round = begin_round
        self.end_round = end_round
        self.every_rounds = every_rounds
        self.refine_rounds = refine_rounds
        self.initial_sparsity = initial_sparsity
        self.power = power
        self._validate()

    # ------------------------------------------------------------------ validation

    def _validate(self) -> None:
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("target_sparsity", "initial_sparsity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                problems.append(f"{name} must be a number, got {value!r}")
            elif not 0.0 <= float(value) < 1.0:
                problems.append(f"{name} must be in [0, 1), got {value!r}")
        # Rounds are numbered from 1 (round r's end prunes): round 0 never happens.
        for name, low in (("begin_round", 1), ("end_round", 1), ("every_rounds", 1), ("refine_rounds", 0)):
            value = getattr(self, name)
            if not _is_int(value):
                problems.append(f"{name} must be an int, got {value!r}")
            elif value < low:
                problems.append(f"{name} must be >= {low}, got {value!r}")
        ints_ok = all(_is_int(getattr(self, n)) for n in ("begin_round", "end_round", "every_rounds"))
        if ints_ok and self.end_round < self.begin_round:
            problems.append(f"end_round ({self.end_round}) must be >= begin_round ({self.begin_round})")
        elif ints_ok and self.every_rounds >= 1 and (self.end_round - self.begin_round) % self.every_rounds:
            problems.append(
                f"end_round - begin_round ({self.end_round - self.begin_round}) must be a multiple of "
                f"every_rounds ({self.every_rounds}) so that end_round is a mask-update round")
        if isinstance(self.power, bool) or not isinstance(self.power, (int, float, np.floating, np.integer)) \
                or not self.power > 0:
            problems.append(f"power must be a number > 0, got {self.power!r}")
        numbers_ok = not any(p.startswith(("target_sparsity", "initial_sparsity")) for p in problems)
        if numbers_ok and self.kind in ("step", "polynomial") and self.initial_sparsity > self.target_sparsity:
            problems.append(f"initial_sparsity ({self.initial_sparsity}) must be <= "
                            f"target_sparsity ({self.target_sparsity})")
        if problems:
            raise ValueError("invalid PruningSchedule:\n" + "\n".join(f"  - {p}" for p in problems))

    # ------------------------------------------------------------------ derived constants

    @property
    def num_updates(self) -> int:
        """Mask updates in the pruning phase (``end_round`` included)."""
        return (self.end_round - self.begin_round) // self.every_rounds + 1

    @property
    def last_mask_round(self) -> int:
        """The last round whose masks may change (end of refinement)."""
        return self.end_round + self.refine_rounds

    def update_rounds(self) -> list[int]:
        """All rounds at which ``should_update_masks`` is True, in order."""
        return list(range(self.begin_round, self.last_mask_round + 1, self.every_rounds))

    def _sparsity_at_update(self, k: float, tf_mode: bool):
        """Sparsity at the ``k``-th pruning update (``k`` may be a float tensor)."""
        target, initial = float(self.target_sparsity), float(self.initial_sparsity)
        if self.kind == "constant":
            return tf.constant(target, tf.float32) if tf_mode else target
        if self.kind == "step":
            return initial + (target - initial) * (k + 1.0) / float(self.num_updates)
        span = self.end_round - self.begin_round
        if span == 0:
            p = tf.ones_like(k) if tf_mode else 1.0
        else:
            p = k * float(self.every_rounds) / float(span)
            p = tf.clip_by_value(p, 0.0, 1.0) if tf_mode else min(1.0, max(0.0, p))
        decay = tf.pow(1.0 - p, float(self.power)) if tf_mode else (1.0 - p) ** self.power
        return target + (initial - target) * decay

    # ------------------------------------------------------------------ public API

    def phase(self, round_num: Round):
        """'dense' | 'pruning' | 'refinement' | 'finetune' (a string tensor for tensors)."""
        if _is_int(round_num):
            return PHASES[self._phase_index_py(int(round_num))]
        return tf.gather(tf.constant(PHASES), self.phase_index(round_num))

    def phase_index(self, round_num: Round):
        """Index into ``PHASES`` (int, or an int32 tensor for tensor input)."""
        if _is_int(round_num):
            return self._phase_index_py(int(round_num))
        r = tf.cast(round_num, tf.int64)
        index = (tf.cast(r >= self.begin_round, tf.int32) + tf.cast(r > self.end_round, tf.int32)
                 + tf.cast(r > self.last_mask_round, tf.int32))
        return index

    def _phase_index_py(self, r: int) -> int:
        return int(r >= self.begin_round) + int(r > self.end_round) + int(r > self.last_mask_round)

    def should_update_masks(self, round_num: Round):
        """True on the update grid from ``begin_round`` through the end of refinement."""
        if _is_int(round_num):
            r = int(round_num)
            return (self.begin_round <= r <= self.last_mask_round
                    and (r - self.begin_round) % self.every_rounds == 0)
        r = tf.cast(round_num, tf.int64)
        in_range = tf.logical_and(r >= self.begin_round, r <= self.last_mask_round)
        on_grid = tf.equal(tf.math.floormod(r - self.begin_round, self.every_rounds), 0)
        return tf.logical_and(in_range, on_grid)

    def sparsity(self, round_num: Round):
        """Target sparsity of the masks in force at ``round_num`` (float or float32 tensor)."""
        if _is_int(round_num):
            r = int(round_num)
            if r < self.begin_round:
                return 0.0
            if r >= self.end_round:
                return float(self.target_sparsity)
            k = (r - self.begin_round) // self.every_rounds
            return float(self._sparsity_at_update(float(k), tf_mode=False))
        r = tf.cast(round_num, tf.int64)
        k = tf.math.floordiv(tf.maximum(r - self.begin_round, 0), self.every_rounds)
        ramp = tf.cast(self._sparsity_at_update(tf.cast(k, tf.float32), tf_mode=True), tf.float32)
        value = tf.where(r >= self.end_round, tf.constant(float(self.target_sparsity), tf.float32), ramp)
        return tf.where(r < self.begin_round, tf.constant(0.0, tf.float32), value)

    def get_config(self) -> dict:
        return dict(kind=self.kind, target_sparsity=self.target_sparsity, begin_round=self.begin_round,
                    end_round=self.end_round, every_rounds=self.every_rounds,
                    refine_rounds=self.refine_rounds, initial_sparsity=self.initial_sparsity,
                    power=self.power)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"PruningSchedule({args})"
