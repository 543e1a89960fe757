"""The federated server state's checkpoints: the newest one that loads."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from typing import Any

import tensorflow_federated as tff


# Fault injection for the resume tests: a run with this variable set to a
# round stops itself (SIGSTOP) right after that round's checkpoint is
# written, so that a test can kill it, or its worker, exactly there.
PAUSE_AFTER_CHECKPOINT_ENV = "TFF_PRUNE_PAUSE_AFTER_CHECKPOINT"


def pause_if_requested(round_num: int) -> None:
    """SIGSTOPs this process after round `round_num`'s checkpoint when
    `PAUSE_AFTER_CHECKPOINT_ENV` names that round (tests only)."""
    if os.environ.get(PAUSE_AFTER_CHECKPOINT_ENV) == str(round_num):
        os.kill(os.getpid(), signal.SIGSTOP)


def sync(coroutine):
    """Runs one of tff.program's async calls to completion."""
    return asyncio.run(coroutine)


def load_latest_readable_checkpoint(
        state_manager: tff.program.FileProgramStateManager, checkpoint_dir: str,
        structure: Any) -> tuple[Any, int]:
    """(state, round) of the newest checkpoint that loads, or (None, 0).

    First removes TFF's half-written `*_temp*` leftovers (a crash during a
    save); a checkpoint that cannot be read is reported on stderr and the
    previous one is tried, so a damaged save costs rounds, never the run.
    """
    if os.path.isdir(checkpoint_dir):
        for name in os.listdir(checkpoint_dir):
            if "_temp" in name:
                shutil.rmtree(os.path.join(checkpoint_dir, name), ignore_errors=True)
    versions = sorted(sync(state_manager.get_versions()) or [], reverse=True)
    for version in versions:
        try:
            return sync(state_manager.load(version, structure)), version
        except Exception as e:  # pylint: disable=broad-except
            # TF raises many types for a damaged SavedModel; any of them means
            # this one is unusable and an older one may do.
            message = " ".join(str(e).split())[:200] or type(e).__name__
            print(f"[tff-prune] checkpoint round_{version} is unreadable ({message}); "
                  "trying the previous one", file=sys.stderr, flush=True)
    return None, 0
