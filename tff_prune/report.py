"""Gathers finished experiments into a Markdown table and PNG plots.

  python -m tff_prune.report --root_output_dir=experiments

Every directory `ROOT/NAME/` with a `summary.json` is a finished experiment
(see `tff_prune/experiment.py` for what a run leaves behind); the others are
skipped with a note. The tool is task-agnostic: each summary names its task
(`config.task_name`) and lists its held-out metrics (`metrics`: name, whether
lower is better, a description; the first is the headline). A summary without
them is an ASR run from before tasks existed: WER then CER, lower is better.

The table has one column per metric (the union over the experiments, in order
of first appearance, upper-cased: `WER`, `CER`, `ACCURACY`, ...) and a leading
`task` column when the experiments span more than one task. Writes, into ROOT:

  report.md                      the table (+ footnotes, skipped runs, plots)
  {metric}_vs_round.png          held-out headline metric over rounds (epochs),
                                 per experiment; one per headline metric, e.g.
                                 wer_vs_round.png, accuracy_vs_round.png
  {metric}_vs_sparsity.png       final headline metric vs achieved sparsity,
                                 per scheme
  federated_vs_centralized.png   only when centralized runs exist; named
                                 federated_vs_centralized_{metric}.png (one
                                 per headline metric) when the experiments
                                 have more than one headline metric

and prints the table. No TensorFlow import: the tool runs in seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import sys
from typing import Any, Optional

from absl import app
from absl import flags
from absl import logging

from tff_prune import report_plots

FLAGS = flags.FLAGS

REPORT_NAME = "report.md"
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


BYTES_FOOTNOTE = (
    "Bytes/round: the mean over rounds of the bytes down + up per client that "
    "the run recorded in metrics.csv, times the cohort: the sizes of the values "
    "that crossed the wire, read from the TFF computations' types (the model "
    "clients received with its bit-packed masks; their deltas, Taylor scores or "
    "mask votes). vs FedAvg: the same over the whole run, as a fraction of what "
    "dense FedAvg of the full model moves. "
    "For runs without those columns it is an estimate: clients/round × 2 × "
    "min(sparse, dense) bytes of the final model, since each sampled client "
    "downloads the masked model and uploads a masked delta with the same "
    "support (the occupancy bitmask of the sparse encoding doubles as the mask). "
    "It is the cost at the final sparsity: rounds before pruning reached its "
    "target moved more (up to 2 × dense bytes per client); TFF framing, "
    "optimizer state and metrics are not counted. Centralized runs move nothing.")

SPARSITY_FOOTNOTE = (
    "Sparsity: fraction of zero weights in the prunable kernels at the end of "
    "the run; target is the schedule's `--target_sparsity`.")

MODEL_BYTES_FOOTNOTE = (
    "Model bytes: dense = 4 B (fp32) per parameter; sparse = 4 B per non-zero "
    "+ a 1-bit-per-element occupancy bitmask (`tff_prune/pruning/stats.py`); "
    "kB/MB are 10^3/10^6 bytes.")

# ASR's metrics get one joint footnote, as before tasks existed, while their
# descriptions are the legacy ones or those of the ASR task.
ASR_FOOTNOTE = "WER / CER: the final held-out evaluation (greedy CTC decoding, no LM)."
_ASR_DESCRIPTIONS = {
    "wer": {"", LEGACY_METRICS[0].description, "word error rate (greedy CTC, no LM)"},
    "cer": {"", LEGACY_METRICS[1].description, "character error rate"},
}

# The table's columns before and after the metrics: (header, right-aligned).
_LEADING_COLUMNS = (
    ("experiment", False), ("mode", False), ("scheme", False), ("structure", False),
    ("policy", False), ("distribution", False), ("importance", False),
    ("target sparsity", True), ("achieved sparsity", True),
)
_TRAILING_COLUMNS = (
    ("params", True), ("non-zero params", True), ("dense bytes", True),
    ("sparse bytes", True), ("bytes/round", True), ("vs FedAvg", True),
)


def report_metrics(experiments: list[Experiment]) -> list[MetricInfo]:
    """The union of the experiments' metrics, by name, in order of first appearance."""
    seen: dict[str, MetricInfo] = {}
    for exp in experiments:
        for metric in exp.metrics:
            seen.setdefault(metric.name, metric)
    return list(seen.values())


def _tasks(experiments: list[Experiment]) -> list[str]:
    return sorted({e.task for e in experiments})


def _metric_footnote(metric: MetricInfo) -> str:
    details = [d for d in (metric.description,
                           "" if metric.lower_is_better else "higher is better") if d]
    detail = f" ({'; '.join(details)})" if details else ""
    return f"{metric.label}: the final held-out evaluation{detail}."


def metric_footnotes(metrics: list[MetricInfo]) -> list[str]:
    """One footnote per metric; ASR's WER and CER share today's line."""
    by_name = {m.name: m for m in metrics}
    asr = all(name in by_name and by_name[name].lower_is_better
              and by_name[name].description in descriptions
              for name, descriptions in _ASR_DESCRIPTIONS.items())
    notes = []
    for metric in metrics:
        if asr and metric.name in _ASR_DESCRIPTIONS:
            if metric.name == "wer":  # CER is in the same line
                notes.append(ASR_FOOTNOTE)
        else:
            notes.append(_metric_footnote(metric))
    return notes


def footnotes(experiments: list[Experiment]) -> list[str]:
    """The table's footnotes: sparsity, each metric, model bytes, bytes/round."""
    return ([SPARSITY_FOOTNOTE] + metric_footnotes(report_metrics(experiments))
            + [MODEL_BYTES_FOOTNOTE, BYTES_FOOTNOTE])


def columns(experiments: list[Experiment]) -> list[tuple[str, bool]]:
    """The table's (header, right-aligned) columns for these experiments: a
    leading `task` column when they span several tasks, one per metric."""
    task = [("task", False)] if len(_tasks(experiments)) > 1 else []
    metric_columns = [(m.label, True) for m in report_metrics(experiments)]
    return task + list(_LEADING_COLUMNS) + metric_columns + list(_TRAILING_COLUMNS)


def human_bytes(value: Optional[int]) -> str:
    """`532.7 kB`, `2.13 MB` (SI units, three significant digits); MISSING for None."""
    if value is None:
        return MISSING
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            number = value / scale
            decimals = 2 if number < 10 else 1 if number < 100 else 0
            return f"{number:.{decimals}f} {unit}"
    return f"{value} B"


def _fmt(value: Optional[float], pattern: str) -> str:
    return MISSING if value is None else format(value, pattern)


def table_row(exp: Experiment, metrics: list[MetricInfo],
              with_task: bool = False) -> list[str]:
    """The table's cells for one experiment, in `columns` order: `metrics` are
    the report's metric columns (MISSING where not this experiment's)."""
    return (([exp.task] if with_task else []) + [
        exp.name, exp.mode, exp.scheme, exp.structure, exp.policy,
        exp.distribution, exp.importance,
        _fmt(exp.target_sparsity, ".2f"), _fmt(exp.achieved_sparsity, ".3f"),
    ] + [_fmt(exp.score(m.name), ".3f") for m in metrics] + [
        _fmt(exp.params, ","), _fmt(exp.nonzero_params, ","),
        human_bytes(exp.dense_bytes), human_bytes(exp.sparse_bytes),
        human_bytes(bytes_per_round(exp)), _fmt(wire_vs_dense(exp), ".2f"),
    ])


def markdown_table(experiments: list[Experiment]) -> str:
    """A Markdown table, padded so it also reads well in a terminal."""
    cols = columns(experiments)
    metrics = report_metrics(experiments)
    with_task = len(_tasks(experiments)) > 1
    rows = [[h for h, _ in cols]] + [table_row(e, metrics, with_task) for e in experiments]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if right else c.ljust(w)
                  for c, w, (_, right) in zip(cells, widths, cols)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if right else ("-" * (w + 2))
                          for w, (_, right) in zip(widths, cols)) + "|"
    return "\n".join([line(rows[0]), rule] + [line(r) for r in rows[1:]])


def render_markdown(root: str, experiments: list[Experiment], notes: list[str],
                    plots: list[str]) -> str:
    """The whole `report.md`: table, footnotes, skipped runs, plots."""
    parts = [f"# Experiments in `{root}`", "",
             f"{len(experiments)} finished experiment(s).", "",
             markdown_table(experiments), ""]
    parts += [f"{i}. {text}" for i, text in enumerate(footnotes(experiments), 1)] + [""]
    if notes:
        parts += ["Notes:", ""] + [f"* {n}" for n in notes] + [""]
    for plot in plots:
        title = os.path.splitext(plot)[0].replace("_", " ")
        parts += [f"![{title}]({plot})", ""]
    return "\n".join(parts)


# -- the program ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Report:
    """What `build_report` produced: the table, the files, the notes."""

    table: str
    markdown_path: str
    plot_paths: tuple[str, ...]
    notes: tuple[str, ...]
    experiments: tuple[Experiment, ...]


def build_report(root: str) -> Report:
    """Reads `root`, writes report.md and the plots into it; ReportError on failure."""
    experiments, notes = find_experiments(root)
    if not experiments:
        skipped = f" ({len(notes)} unfinished or unreadable)" if notes else ""
        raise ReportError(f"no finished experiments (with a summary.json) in {root}{skipped}")
    try:
        plots, plot_notes = report_plots.write_plots(experiments, root)
        notes = notes + plot_notes
        names = [os.path.basename(p) for p in plots]
        markdown_path = os.path.join(root, REPORT_NAME)
        with open(markdown_path, "w") as f:
            f.write(render_markdown(root, experiments, notes, names))
    except OSError as e:
        raise ReportError(f"cannot write the report into {root}: {e.strerror or e}") from None
    return Report(markdown_table(experiments), markdown_path, tuple(plots),
                  tuple(notes), tuple(experiments))


def define_flags() -> None:
    """The CLI's flags; defined only when run as a program, so that importing
    this module beside `tff_prune.experiment_flags` (which also has
    --root_output_dir) does not clash."""
    flags.DEFINE_string("root_output_dir", None,
                        "Directory holding one subdirectory per experiment (the "
                        "--root_output_dir of run_experiment.py).")
    flags.mark_flag_as_required("root_output_dir")


def main(argv: list[str]) -> int:
    """Prints the table and where the report and plots are; 2 on a bad root."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        report = build_report(FLAGS.root_output_dir)
    except ReportError as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    for note in report.notes:
        print(f"[report] {note}")
    print(report.table)
    print()
    print(f"[report] {len(report.experiments)} experiment(s); table: "
          f"{report.markdown_path}; plots: {', '.join(report.plot_paths) or 'none'}")
    return 0


if __name__ == "__main__":
    define_flags()
    logging.set_verbosity(logging.WARNING)  # e.g. matplotlib's font-cache INFO line
    app.run(main)
