"""The report: finished experiments gathered into a Markdown table and PNG plots.

  python -m tff_prune.report --root_output_dir=experiments

Every directory `ROOT/NAME/` with a `summary.json` is a finished experiment
(see `tff_prune/program/experiment.py` for what a run leaves behind); the others are
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

Modules: ``runs`` (a finished experiment read from its folder), ``table``
(the Markdown table and `build_report`), ``plots`` (matplotlib), and
``__main__`` (the command line). Imports nothing else of `tff_prune`: the
report reads only what runs leave on disk.
"""

from tff_prune.report.runs import (Experiment, MetricInfo, ReportError, bytes_per_round,
                                   find_experiments, load_experiment, wire_vs_dense)
from tff_prune.report.table import Report, build_report, markdown_table

__all__ = [
    "Experiment", "MetricInfo", "Report", "ReportError", "build_report", "bytes_per_round",
    "find_experiments", "load_experiment", "markdown_table", "wire_vs_dense",
]
