"""``python -m tff_prune.report --root_output_dir=experiments``: the report of a folder of runs.

Prints the table and writes ``report.md`` and the plots into the folder
(see `tff_prune.report`). No TensorFlow import: it runs in seconds.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging

from tff_prune.report.table import ReportError, build_report

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The CLI's flags; defined only when run as a program, so that importing
    this module beside `tff_prune.program.experiment_flags` (which also has
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
