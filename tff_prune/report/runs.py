"""A finished experiment, read from its folder: config, metrics, curves, bytes.

Every directory ``ROOT/NAME/`` with a ``summary.json`` is a finished
experiment; the others are skipped with a note. A summary without its
metric list is an ASR run from before tasks existed: WER then CER.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
from typing import Any, Optional

MISSING = "—"
# The task of a summary whose config names none (from before tasks existed).
DEFAULT_TASK = "asr"
# A metric's name: also a column of eval.csv and part of its plots' file names.
_METRIC_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class ReportError(Exception):
    """A problem with the root directory: reported as one line, exit code 2."""


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """One held-out metric of a task, as its summary.json lists it."""

    name: str
    lower_is_better: bool = True
    description: str = ""

    @property
    def label(self) -> str:
        """The metric's name in headers, axes and notes: `WER`, `ACCURACY`."""
        return self.name.upper()


# The metrics of a summary without a "metrics" list: an ASR run from before
# tasks existed, scored by greedy CTC decoding without a language model.
LEGACY_METRICS = (
    MetricInfo("wer", True, "word error rate (greedy CTC decoding, no LM)"),
    MetricInfo("cer", True, "character error rate (greedy CTC decoding, no LM)"),
)


@dataclasses.dataclass(frozen=True)
class CurvePoint:
    """One held-out evaluation: the round (epoch when centralized), the value of
    the experiment's headline metric, the sparsity."""

    step: int
    value: float
    sparsity: Optional[float]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One finished run: its summary.json, flattened, and its eval curve."""

    name: str
    path: str
    mode: str
    scheme: str
    structure: str
    policy: str
    distribution: str
    importance: str
    target_sparsity: Optional[float]
    achieved_sparsity: Optional[float]
    task: str
    metrics: tuple[MetricInfo, ...]  # the headline first
    # The final value of each metric, by name.
    scores: dict[str, Optional[float]] = dataclasses.field(hash=False)
    params: Optional[int]
    nonzero_params: Optional[int]
    dense_bytes: Optional[int]
    sparse_bytes: Optional[int]
    clients_per_round: Optional[int]
    total_steps: Optional[int]
    curve: tuple[CurvePoint, ...]  # of the headline metric

    def score(self, name: str) -> Optional[float]:
        """The final value of metric `name`; None if missing or not this task's."""
        return self.scores.get(name)

    @property
    def headline(self) -> str:
        """The name of the task's headline metric (the first one)."""
        return self.metrics[0].name

    @property
    def centralized(self) -> bool:
        return self.mode == "centralized"

    @property
    def pruned(self) -> bool:
        return self.scheme not in ("none", MISSING)

    @property
    def method(self) -> str:
        """Scheme plus its structure, e.g. `structured (column)`, `block (1x4)`."""
        if self.structure == MISSING:
            return self.scheme
        return f"{self.scheme} ({self.structure})"


# -- reading -------------------------------------------------------------------


def _get(tree: Any, dotted: str) -> Any:
    """`tree["a"]["b"]` for `"a.b"`; None where any level is missing."""
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _float(value: Any) -> Optional[float]:
    """A finite float, or None for missing / empty / unparsable / NaN values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> Optional[int]:
    number = _float(value)
    return None if number is None else int(number)


def read_curve(path: str, step_column: str, metric: str) -> tuple[CurvePoint, ...]:
    """Held-out `metric` per evaluation from an `eval.csv` (empty if absent or bad).

    Rows are sorted by step; a step evaluated twice (a resumed run) keeps its
    last row.
    """
    if not os.path.isfile(path):
        return ()
    points: dict[int, CurvePoint] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step, value = _int(row.get(step_column)), _float(row.get(metric))
            if step is not None and value is not None:
                points[step] = CurvePoint(step, value, _float(row.get("sparsity")))
    return tuple(points[s] for s in sorted(points))


def read_metrics(summary: dict) -> tuple[MetricInfo, ...]:
    """The summary's metrics, the headline first; `LEGACY_METRICS` when it has
    none listed. ValueError if the list is malformed."""
    if "metrics" not in summary:
        return LEGACY_METRICS
    entries = summary["metrics"]
    if not isinstance(entries, list) or not entries:
        raise ValueError("summary.json has an empty or malformed metrics list")
    metrics, seen = [], set()
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _METRIC_NAME.match(name) or name in seen:
            raise ValueError(f"summary.json has a malformed metric entry: {entry!r}")
        seen.add(name)
        if entry.get("detail") is True:
            continue  # a breakdown (e.g. per class): eval.csv and summary.json only
        lower = entry.get("lower_is_better", True)
        description = entry.get("description")
        metrics.append(MetricInfo(name, lower if isinstance(lower, bool) else True,
                                  description if isinstance(description, str) else ""))
    if not metrics:
        raise ValueError("summary.json lists only detail metrics")
    return tuple(metrics)


def _structure(pruning: dict) -> str:
    """What a unit is: the structure, the block shape, 2:4, or MISSING."""
    scheme = pruning.get("scheme")
    if scheme == "structured":
        return str(pruning.get("structure", MISSING))
    if scheme == "block" and isinstance(pruning.get("block_shape"), list):
        return "x".join(str(v) for v in pruning["block_shape"])
    if scheme == "m_by_n":
        return "2:4"
    return MISSING


def _achieved_sparsity(summary: dict, scheme: str,
                       curve: tuple[CurvePoint, ...]) -> Optional[float]:
    """Final fraction of zeros in the prunable kernels, from the best source."""
    for key in ("final.sparsity_per_layer.overall", "final.sparsity"):
        value = _float(_get(summary, key))
        if value is not None:
            return value
    if curve and curve[-1].sparsity is not None:
        return curve[-1].sparsity
    return 0.0 if scheme == "none" else None


def _pruning_field(pruning: dict, key: str) -> str:
    """A method setting, MISSING for dense runs (where it means nothing)."""
    if pruning.get("scheme") in (None, "none"):
        return MISSING
    return str(pruning.get(key, MISSING))


def load_experiment(path: str) -> Experiment:
    """Reads one finished experiment directory; ValueError if its summary is bad."""
    try:
        with open(os.path.join(path, "summary.json")) as f:
            summary = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable summary.json ({e})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("config"), dict):
        raise ValueError("summary.json has no config")
    config = summary["config"]
    metrics = read_metrics(summary)
    task = config.get("task_name")
    task = task if isinstance(task, str) and task else DEFAULT_TASK
    final = summary.get("final") if isinstance(summary.get("final"), dict) else {}
    mode = str(config.get("mode", "federated"))
    pruning = config.get("pruning") if isinstance(config.get("pruning"), dict) else {}
    scheme = str(pruning.get("scheme", MISSING))
    centralized = mode == "centralized"
    curve = read_curve(os.path.join(path, "eval.csv"), "epoch" if centralized else "round",
                       metrics[0].name)
    target = _float(_get(pruning, "schedule.target_sparsity")) if scheme != "none" else None
    return Experiment(
        name=os.path.basename(os.path.normpath(path)), path=path, mode=mode,
        scheme=scheme, structure=_structure(pruning),
        policy=_pruning_field(pruning, "policy"),
        distribution=_pruning_field(pruning, "distribution"),
        importance=_pruning_field(pruning, "importance"),
        target_sparsity=target,
        achieved_sparsity=_achieved_sparsity(summary, scheme, curve),
        task=task, metrics=metrics,
        scores={m.name: _float(final.get(m.name)) for m in metrics},
        params=_int(_get(summary, "model.params")),
        nonzero_params=_int(_get(summary, "model.nonzero_params")),
        dense_bytes=_int(_get(summary, "model.dense_bytes")),
        sparse_bytes=_int(_get(summary, "model.sparse_bytes")),
        clients_per_round=(None if centralized
                           else _int(_get(config, "federated.clients_per_round"))),
        total_steps=_int(_get(config, "centralized.epochs" if centralized
                              else "federated.total_rounds")),
        curve=curve)


def find_experiments(root: str) -> tuple[list[Experiment], list[str]]:
    """Finished experiments under `root` (sorted) and one note per skipped dir."""
    if not os.path.isdir(root):
        raise ReportError(f"--root_output_dir={root} does not exist or is not a directory")
    experiments, notes = [], []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if not os.path.isdir(path) or name.startswith("."):
            continue
        if not os.path.isfile(os.path.join(path, "summary.json")):
            notes.append(f"skipped {name}/: no summary.json (not finished)")
            continue
        try:
            experiments.append(load_experiment(path))
        except ValueError as e:
            notes.append(f"skipped {name}/: {e}")
    experiments.sort(key=_sort_key)
    return experiments, notes


def _sort_key(exp: Experiment) -> tuple:
    return (exp.task, exp.centralized, exp.pruned, exp.method, exp.policy,
            exp.target_sparsity or 0.0, exp.name)


# -- the table -----------------------------------------------------------------


def _recorded_wire_rows(exp: Experiment) -> list[tuple[float, float, float]]:
    """(down, up, dense) bytes per client of each round in metrics.csv."""
    path = os.path.join(exp.path, "metrics.csv")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    columns = ("bytes_down_per_client", "bytes_up_per_client", "dense_bytes_per_client")
    values = [tuple(_float(r.get(c)) for c in columns) for r in rows]
    return [v for v in values if None not in v]


def recorded_bytes_per_round(exp: Experiment) -> Optional[int]:
    """Mean bytes down + up per round for the cohort, from the per-client
    figures the run recorded in metrics.csv (read from the TFF types of what
    crossed the wire); None when absent."""
    rows = _recorded_wire_rows(exp)
    if not rows or exp.clients_per_round is None:
        return None
    totals = [down + up for down, up, _ in rows]
    return int(round(exp.clients_per_round * sum(totals) / len(totals)))


def wire_vs_dense(exp: Experiment) -> Optional[float]:
    """Recorded bytes down + up per client over the run, as a fraction of
    what dense FedAvg of the full model moves; None when not recorded
    (and for centralized runs, which move nothing)."""
    if exp.centralized:
        return None
    rows = _recorded_wire_rows(exp)
    if not rows:
        return None
    return sum(d + u for d, u, _ in rows) / sum(2 * dense for _, _, dense in rows)


def bytes_per_round(exp: Experiment) -> Optional[int]:
    """Bytes a federated round moves: as recorded by the run, else estimated
    from the final model (see `BYTES_FOOTNOTE`)."""
    if exp.centralized or exp.clients_per_round is None:
        return None
    recorded = recorded_bytes_per_round(exp)
    if recorded is not None:
        return recorded
    sizes = [b for b in (exp.sparse_bytes, exp.dense_bytes) if b is not None]
    if not sizes:
        return None
    return 2 * min(sizes) * exp.clients_per_round
