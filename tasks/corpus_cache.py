"""A generated corpus cached on disk, built once and renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable


def build_once(cache_dir: str, name: str, generate: Callable[[str], None], *,
               flag: str, error: type[Exception]) -> str:
    """``cache_dir/name``, made by ``generate(folder)`` unless it exists.

    Generation writes into a temporary sibling folder renamed into place only
    when complete, so an interrupted run is never mistaken for a corpus (its
    leftover ``.NAME.tmp-*`` folder is simply ignored). An unwritable cache is
    one `error` naming `flag`.
    """
    final_dir = os.path.join(cache_dir, name)
    if os.path.exists(final_dir):
        return final_dir
    try:
        os.makedirs(cache_dir, exist_ok=True)
        temp_dir = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_dir)
    except OSError as e:
        # E.g. the cache path runs under a regular file, or is read-only.
        raise error(f"{flag}={cache_dir} is not writable: {e.strerror or e}") from None
    try:
        generate(temp_dir)
        os.chmod(temp_dir, 0o755)  # mkdtemp makes it owner-only
        try:
            os.rename(temp_dir, final_dir)
        except OSError:
            # Another process finished the same corpus first: use theirs.
            if not os.path.isdir(final_dir):
                raise
            shutil.rmtree(temp_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return final_dir
