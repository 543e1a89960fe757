"""A run whose training diverged stops, named, instead of finishing as usual.

A round diverged when its training loss (the clients' mean loss per example)
is not finite, or exceeds `LOSS_FACTOR` times the initial model's held-out
loss. The reference is the untrained model's loss, not round 1's: a rate far
too large already blows round 1's own loss up. Training that works lowers
the loss below that reference, and a spike after a mask update stays within
a few times it, far below the factor.

A diverged run exits with `EXIT_CODE` and leaves `RECORD` in its folder
(the round, its loss and the line printed), so that a sweep can record it
as diverged instead of failing or scoring it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional

# How far above the initial model's held-out loss a round's training loss
# may go before the run counts as diverged.
LOSS_FACTOR = 100.0

# run_experiment.py's exit code for a diverged run (2: bad input, 3: worker lost).
EXIT_CODE = 5

# What a diverged run leaves in its folder (`write_record`).
RECORD = "diverged.json"


class DivergedError(RuntimeError):
    """Training diverged: one line naming the round, the loss and what to change."""

    def __init__(self, message: str, round_num: int, train_loss: float = math.nan,
                 reference_loss: float = math.nan):
        super().__init__(message)
        self.round_num = round_num
        self.train_loss = train_loss
        self.reference_loss = reference_loss


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
        f"look at {settings}", round_num, train_loss, reference_loss)


def write_record(run_dir: str, error: DivergedError) -> str:
    """Writes `RECORD` for `error` into `run_dir`; returns its path."""
    path = os.path.join(run_dir, RECORD)
    record = {"round": error.round_num,
              # JSON has no inf/NaN: a non-finite loss is kept as its repr.
              "train_loss": error.train_loss if math.isfinite(error.train_loss)
              else repr(error.train_loss),
              "reference_loss": error.reference_loss, "message": str(error)}
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    return path


def read_record(run_dir: str) -> Optional[dict]:
    """The `RECORD` a diverged run left in `run_dir`, or None."""
    path = os.path.join(run_dir, RECORD)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
