"""What to prune and who decides: one validated value object per experiment."""

from __future__ import annotations

import dataclasses
from typing import Optional

from tff_prune.pruning import schedule as schedule_lib

SCHEMES = ("none", "unstructured", "structured", "block", "m_by_n")
STRUCTURES = ("column", "row", "half_column", "half_row", "head", "channel")
IMPORTANCES = ("magnitude", "taylor")
DISTRIBUTIONS = ("uniform", "global", "adaptive")
MASK_POLICIES = ("server", "client_vote", "fixed")
# Structures whose removed units take their coupled biases with them (and can
# later be compacted into a physically smaller model).
COUPLED_STRUCTURES = ("column", "row", "head", "channel")


class ConfigError(ValueError):
    """A bad flag value or combination: reported as one line, no stack trace."""


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"--{name}={value!r} is not one of: {', '.join(choices)}")


@dataclasses.dataclass(frozen=True)
class PruningConfig:
    """The pruning method: scheme, importance, allocation, policy, schedule."""

    scheme: str = "structured"
    structure: str = "column"
    importance: str = "magnitude"
    distribution: str = "uniform"
    policy: str = "server"
    schedule: schedule_lib.PruningSchedule = dataclasses.field(
        default_factory=lambda: schedule_lib.PruningSchedule(
            kind="step", target_sparsity=0.5, begin_round=1, end_round=4,
            every_rounds=1, refine_rounds=0))
    # Regex of layers never pruned; None: the task's `excluded_layers`.
    exclude_layers: Optional[str] = None
    block_shape: tuple[int, int] = (1, 4)

    def __post_init__(self):
        _choice("pruning", self.scheme, SCHEMES)
        _choice("structure", self.structure, STRUCTURES)
        _choice("importance", self.importance, IMPORTANCES)
        _choice("sparsity_distribution", self.distribution, DISTRIBUTIONS)
        _choice("mask_policy", self.policy, MASK_POLICIES)
        if self.scheme == "m_by_n" and abs(self.schedule.target_sparsity - 0.5) > 1e-9:
            raise ConfigError("--pruning=m_by_n is 2:4 sparsity: --target_sparsity "
                             f"must be 0.5, not {self.schedule.target_sparsity}")
        if self.scheme == "m_by_n" and self.distribution != "uniform":
            raise ConfigError("--pruning=m_by_n fixes 50% in every layer: use "
                             "--sparsity_distribution=uniform")
        if len(self.block_shape) != 2 or min(self.block_shape) < 1:
            raise ConfigError(f"--block_shape must be two positive ints, not {self.block_shape}")

    @property
    def enabled(self) -> bool:
        return self.scheme != "none"

    @property
    def masks_biases(self) -> bool:
        """Whether a unit whose kernel column is fully pruned loses its bias."""
        return self.scheme == "structured" and self.structure in COUPLED_STRUCTURES
