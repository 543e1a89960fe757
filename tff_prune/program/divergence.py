"""A run whose training diverged stops, named, instead of finishing as usual.

A round diverged when its training loss (the clients' mean loss per example)
is not finite, or exceeds `LOSS_FACTOR` times the initial model's held-out
loss. The reference is the untrained model's loss, not round 1's: a rate far
too large already blows round 1's own loss up. Training that works lowers
the loss below that reference, and a spike after a mask update stays within
a few times it, far below the factor.
"""

from __future__ import annotations

import math

# How far above the initial model's held-out loss a round's training loss
# may go before the run counts as diverged.
LOSS_FACTOR = 100.0


class DivergedError(RuntimeError):
    """Training diverged: one line naming the round, the loss and what to change."""

    def __init__(self, message: str, round_num: int):
        super().__init__(message)
        self.round_num = round_num


def check_round_loss(round_num: int, train_loss: float, reference_loss: float,
                     settings: str) -> None:
    """Raises `DivergedError` when round ``round_num``'s training loss diverged.

    ``reference_loss`` is the initial model's held-out loss per example;
    ``settings`` names the settings to look at (e.g. the learning rates).
    """
    if math.isfinite(train_loss) and train_loss <= LOSS_FACTOR * reference_loss:
        return
    why = ("is not finite" if not math.isfinite(train_loss) else
           f"is over {LOSS_FACTOR:g}x the initial model's held-out loss "
           f"({reference_loss:.4g})")
    raise DivergedError(
        f"training diverged at round {round_num}: its training loss {train_loss:.4g} {why}; "
        f"look at {settings}", round_num)
