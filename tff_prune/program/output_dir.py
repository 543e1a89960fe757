"""The experiment directory and its config record: resume, extend, refuse or replace.

A run's directory holds `config.json`, the settings that produced it. Starting
a run is two steps, so that nothing is written or deleted before every check
of the new run has passed:

  plan = plan_output_dir(...)   # checks only: refuses to mix or clobber runs
  ...                           # the caller's own checks (data, cohort)
  commit_output_dir(plan)       # only now: replace (if asked) and record

Settings that say where a run is written or how it is watched (checkpoint
and evaluation cadence, the corpus cache, strict data checks) never block a
resume, and raising `--total_rounds` of a federated run extends it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Optional

from tff_prune.pruning import config as config_lib

CONFIG_FILE = "config.json"
# Where a run is written or how it is watched, not what it computes.
NON_RESULT_KEYS = frozenset({
    "root_output_dir", "experiment_name", "checkpoint_every_rounds",
    "federated.eval_every_rounds", "centralized.eval_every_epochs",
    "task.corpus.strict", "task.corpus.cache_dir", "task.corpus.feature_cache_dir",
    "federated.workers", "federated.local_workers", "federated.datasets_on_workers",
    "federated.worker_lost_after_s", "federated.worker_concurrency",
})
# Federated rounds only add to a run: a larger value continues it.
EXTENDABLE_KEY = "federated.total_rounds"


@dataclasses.dataclass(frozen=True)
class OutputPlan:
    """What `commit_output_dir` will do, decided by `plan_output_dir`."""

    path: str
    record: dict[str, Any]
    replace: bool        # delete the existing experiment first (--overwrite)
    resume: bool         # the directory holds this very experiment


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{'a.b': leaf} for a nest of dicts."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def _differing(previous: dict, current: dict, defaults: dict) -> list[str]:
    keys = (set(previous) | set(current)) - NON_RESULT_KEYS
    # A setting added since `previous` was written ran at its default.
    differing = sorted(k for k in keys
                       if previous.get(k, defaults.get(k)) != current.get(k))
    extendable = (current.get("mode", "federated") == "federated"
                  and isinstance(previous.get(EXTENDABLE_KEY), int)
                  and isinstance(current.get(EXTENDABLE_KEY), int)
                  and current[EXTENDABLE_KEY] > previous[EXTENDABLE_KEY])
    return [k for k in differing if not (k == EXTENDABLE_KEY and extendable)]


def plan_output_dir(path: str, record: dict[str, Any], overwrite: bool,
                    defaults: Optional[dict[str, Any]] = None) -> OutputPlan:
    """Checks that `path` may hold the run described by `record`; writes nothing.

    `defaults`: the record of a run with every setting at its default; a
    setting missing from an existing experiment's record (one added since
    it was written) counts as its default there.

    Raises `ConfigError` (one line) when `path` is a file, a folder that is not
    a tff-prune experiment (never replaced, even with `overwrite`), or an
    experiment with different settings and `overwrite` is off.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise config_lib.ConfigError(f"experiment path {path} exists and is not a directory")
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isdir(path) or not os.listdir(path):
        return OutputPlan(path, record, replace=False, resume=False)
    if not os.path.isfile(config_path):
        raise config_lib.ConfigError(
            f"{path} exists and is not a tff-prune experiment (no {CONFIG_FILE}); "
            "nothing was changed: choose another --experiment_name or --root_output_dir")
    try:
        with open(config_path) as f:
            previous = json.load(f)
    except (OSError, ValueError) as e:
        raise config_lib.ConfigError(
            f"cannot read {config_path} ({e}); nothing was changed: "
            "choose another --experiment_name") from None
    defaults = defaults or {}
    differing = _differing(previous, record, defaults)
    if not differing:
        return OutputPlan(path, record, replace=False, resume=True)
    if not overwrite:
        details = ", ".join(f"{k} ({previous.get(k, defaults.get(k))!r} -> {record.get(k)!r})"
                            for k in differing[:6])
        more = f" and {len(differing) - 6} more" if len(differing) > 6 else ""
        raise config_lib.ConfigError(
            f"experiment {path} exists with different settings: {details}{more}; "
            "pass --overwrite to replace it or choose another --experiment_name")
    return OutputPlan(path, record, replace=True, resume=False)


def prepare_output_dir(path: str) -> None:
    """Creates `path` or fails with one line if it can't be written."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise config_lib.ConfigError(
            f"output directory {path} is not writable: {e.strerror}") from None


def commit_output_dir(plan: OutputPlan) -> None:
    """Replaces the old experiment if planned, then records the config.

    Call only once every check of the new run has passed.
    """
    if plan.replace:
        shutil.rmtree(plan.path)
    prepare_output_dir(plan.path)
    config_path = os.path.join(plan.path, CONFIG_FILE)
    with open(config_path + ".tmp", "w") as f:
        json.dump(plan.record, f, indent=2, sort_keys=True)
    os.replace(config_path + ".tmp", config_path)
