"""TF Serving's model directory layout: ``EXPORT_BASE/MODEL_NAME/VERSION/``.

TF Serving watches ``EXPORT_BASE/MODEL_NAME`` and loads the highest integer
child (by default), so every export here

* gets the next integer version (1 + the highest existing one), never
  reusing or touching an existing version;
* is written completely into a temporary sibling whose name is not an
  integer (``.tmp-...``, which TF Serving ignores) and then renamed into
  place, so a polling server never sees a half-written version;
* holds an advisory lock on ``MODEL_NAME/.export.lock`` while it picks the
  number and renames, so two exporters on one machine cannot race.

``os.rename`` of a directory onto an existing non-empty directory fails
(ENOTEMPTY / EEXIST) instead of replacing it, so even an exporter that
ignores the lock cannot overwrite a finished version; if that happens the
next free number is taken.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterator

_LOCK_NAME = ".export.lock"
_TMP_PREFIX = ".tmp-"
_MAX_RENAME_TRIES = 100


@dataclasses.dataclass(frozen=True)
class ExportedVersion:
    """Where an export landed."""

    model_dir: str  # EXPORT_BASE/MODEL_NAME
    version: int
    path: str       # EXPORT_BASE/MODEL_NAME/VERSION


def existing_versions(model_dir: str) -> list[int]:
    """Sorted integer versions under ``model_dir`` (what TF Serving would consider)."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(name) for name in os.listdir(model_dir)
                  if name.isdigit() and os.path.isdir(os.path.join(model_dir, name)))


def next_version(model_dir: str) -> int:
    """1 + the highest existing version, or 1."""
    versions = existing_versions(model_dir)
    return versions[-1] + 1 if versions else 1


@contextlib.contextmanager
def _locked(model_dir: str) -> Iterator[None]:
    with open(os.path.join(model_dir, _LOCK_NAME), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_version(export_base: str, model_name: str,
                      write: Callable[[str], None]) -> ExportedVersion:
    """Runs ``write(tmp_dir)`` and moves the result to the next version atomically.

    ``write`` must create ``tmp_dir`` (e.g. ``tf.saved_model.save``) and put
    the whole version there. If it raises, the temporary directory is removed
    and no version appears.
    """
    if not model_name or os.sep in model_name or model_name.startswith("."):
        raise ValueError(f"bad model name {model_name!r}")
    model_dir = os.path.join(os.path.abspath(export_base), model_name)
    os.makedirs(model_dir, exist_ok=True)
    tmp = os.path.join(model_dir, f"{_TMP_PREFIX}{uuid.uuid4().hex}")
    try:
        write(tmp)
        if not os.path.isdir(tmp) or not os.listdir(tmp):
            raise RuntimeError(f"the export writer left nothing in {tmp}")
        with _locked(model_dir):
            version = next_version(model_dir)
            for _ in range(_MAX_RENAME_TRIES):
                target = os.path.join(model_dir, str(version))
                try:
                    if os.path.lexists(target):
                        raise OSError(errno.EEXIST, "exists", target)
                    os.rename(tmp, target)
                    break
                except OSError as e:
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    version += 1  # taken behind our back: never replace it
            else:
                raise RuntimeError(f"no free version number under {model_dir}")
            _fsync_dir(model_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return ExportedVersion(model_dir=model_dir, version=version, path=target)
