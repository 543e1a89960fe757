"""The report's Markdown table, its footnotes, and `build_report` (table + plots)."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from tff_prune.report import plots as plots_lib
from tff_prune.report.runs import (LEGACY_METRICS, MISSING, Experiment, MetricInfo,
                                   ReportError, bytes_per_round, find_experiments,
                                   wire_vs_dense)

REPORT_NAME = "report.md"


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
        plots, plot_notes = plots_lib.write_plots(experiments, root)
        notes = notes + plot_notes
        names = [os.path.basename(p) for p in plots]
        markdown_path = os.path.join(root, REPORT_NAME)
        with open(markdown_path, "w") as f:
            f.write(render_markdown(root, experiments, notes, names))
    except OSError as e:
        raise ReportError(f"cannot write the report into {root}: {e.strerror or e}") from None
    return Report(markdown_table(experiments), markdown_path, tuple(plots),
                  tuple(notes), tuple(experiments))
