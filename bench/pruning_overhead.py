"""What pruning costs a round during the pruning window, side by side with none.

  python -m bench.pruning_overhead [--model_size=tiny] [--quick]

Each pruning method (every scheme under the server policy; `fixed`,
`client_vote` and Taylor importance on column and unstructured pruning)
runs the pruning window as the run would: a round after which the server
decides new masks (its finalizer; clients send Taylor scores or votes in
that round), then a compact or sparse round under them (structured schemes
train the compact model, as `--client_model=compact` does). Timed: rounds
2-3 (the masks reach 50% after round 2) from the same starting state, after
one untimed pass has built every computation they need (the *first pass*,
which a real run pays once per mask shape); then `--repeats` passes,
alternating with `--pruning=none` running the same rounds in the same
process, medians. One process per method. Goal (issue 9): every method
≤ 1.15× none.
Results: `bench/results/pruning_overhead.{md,json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TFF_PRUNE_TF_LOG_LEVEL", "3")

# pylint: disable=wrong-import-position
from bench import common
from tff_prune.federated import process as process_lib
from tff_prune.program import experiment_config
from tff_prune.program import federated_driver
from tff_prune.pruning import config as config_lib
from tff_prune.pruning import schedule as schedule_lib
from tff_prune.runtime import owned as runtime

GOAL = 1.15
WINDOW = (2, 3)  # rounds timed: masks are updated after round 2
# (label, scheme, structure, importance, policy): every scheme under the
# server policy; the other policies and Taylor importance on column pruning
# (the paper's main scheme) and on unstructured pruning.
GRID = (
    ("structured column", "structured", "column", "magnitude", "server"),
    ("structured row", "structured", "row", "magnitude", "server"),
    ("structured half_column", "structured", "half_column", "magnitude", "server"),
    ("structured half_row", "structured", "half_row", "magnitude", "server"),
    ("structured head", "structured", "head", "magnitude", "server"),
    ("structured channel", "structured", "channel", "magnitude", "server"),
    ("unstructured", "unstructured", "column", "magnitude", "server"),
    ("block", "block", "column", "magnitude", "server"),
    ("m_by_n", "m_by_n", "column", "magnitude", "server"),
    ("structured column", "structured", "column", "magnitude", "fixed"),
    ("structured column", "structured", "column", "magnitude", "client_vote"),
    ("structured column, Taylor", "structured", "column", "taylor", "server"),
    ("unstructured", "unstructured", "column", "magnitude", "client_vote"),
    ("unstructured, Taylor", "unstructured", "column", "taylor", "server"),
)
QUICK = (("structured column", "server"),)


def pruning_config(scheme: str, structure: str, importance: str,
                   policy: str) -> config_lib.PruningConfig:
    """50% at once, after round 2 (the window's mask update)."""
    if scheme == "none":
        return config_lib.PruningConfig(scheme="none")
    return config_lib.PruningConfig(
        scheme=scheme, structure=structure, importance=importance, policy=policy,
        schedule=schedule_lib.PruningSchedule(
            kind="constant", target_sparsity=0.5, begin_round=2, end_round=2,
            every_rounds=1, refine_rounds=0))


def window_variant(name: str, task, pruning: config_lib.PruningConfig,
                   data) -> common.Variant:
    """A variant whose step runs the window from the state after round 1."""
    built = process_lib.build_federated_pruning_process(
        task, pruning, common.client_optimizer(), common.server_optimizer())
    rounds = federated_driver.build_rounds(
        experiment_config.ExperimentConfig(pruning=pruning), task, built)
    next_fn = rounds.next if rounds is not None else built.process.next
    start = next_fn(built.process.initialize(), data).state

    def step(d):
        state = start
        for _ in WINDOW:
            state = next_fn(state, d).state

    variant = common.Variant(name, step)
    began = time.perf_counter()
    variant.run(data)  # builds every computation the window needs
    variant.first_pass_seconds = time.perf_counter() - began
    return variant


def measure_one(args) -> dict:
    """Method `args.method` (index into the grid) against none, in this process."""
    label, scheme, structure, importance, policy = GRID[args.method]
    name = f"{label} / {policy}"
    task = common.load_task(args.model_size, args.num_train_speakers, args.cache_dir)
    data = common.cohort_data(task, args.clients, args.client_epochs)
    row = {"method": name, "error": None}
    with runtime.local_runtime(log_dir=os.path.join(args.work_dir, "logs")):
        none = window_variant("none", task, pruning_config("none", "", "", ""), data)
        try:
            method = window_variant(
                name, task, pruning_config(scheme, structure, importance, policy), data)
        except Exception as e:  # pylint: disable=broad-except
            # A method that cannot run here is a row saying why, not a lost bench.
            traceback.print_exc()
            row["error"] = " ".join(str(e).split())[:160] or type(e).__name__
            return row
        common.time_round_robin([none, method], data, args.repeats)
    row.update(window_seconds_median=method.median, none_window_seconds_median=none.median,
               vs_none=method.median / none.median,
               first_pass_seconds=method.first_pass_seconds,
               first_pass_vs_none=method.first_pass_seconds / none.first_pass_seconds)
    return row


def run(args) -> dict:
    """Every method of the grid in its own process (TFF keeps every traced
    computation for the life of a process and its worker: 34 methods in one
    would not fit in memory), each timed side by side with none."""
    rows = []
    for i, (label, _, _, _, policy) in enumerate(GRID):
        if args.quick and (label, policy) not in QUICK:
            continue
        rows.append(common.row_in_subprocess(
            "bench.pruning_overhead",
            [f"--method={i}", f"--model_size={args.model_size}", f"--clients={args.clients}"],
            args, f"{label} / {policy}"))
    return common.header({
        "model_size": args.model_size, "clients": args.clients,
        "client_epochs": args.client_epochs, "repeats": args.repeats,
        "window_rounds": list(WINDOW), "goal": GOAL, "rows": rows})


def markdown(result: dict) -> str:
    lines = [
        f"# Pruning overhead: `{result['model_size']}` model, {result['clients']} clients × "
        f"{result['client_epochs']} local epoch(s), window of rounds "
        f"{result['window_rounds'][0]}–{result['window_rounds'][-1]}, median of "
        f"{result['repeats']}",
        "",
        f"Measured {result['date']} on {result['cpus']} CPU cores ({result['machine']}) by "
        "`python -m bench.pruning_overhead`. Each method runs the same window of rounds from "
        "the same state (masks at 50% after round 2: a mask-update round, then a pruned one), "
        "with the client model the run would use (compact for structured schemes, sparse "
        "otherwise); *vs none* is the ratio to `--pruning=none`'s window, timed alternately "
        "in the same process (one process per method). *First pass* "
        "includes building every round computation of the window (a compact architecture per "
        "mask shape), which a real run pays once per shape.",
        "",
        "| method / policy | window s | none's window s | vs none | first pass s "
        "| first pass vs none |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if r["error"]:
            lines.append(f"| {r['method']} | — | — | — | — | — (failed: {r['error']}) |")
            continue
        lines.append(f"| {r['method']} | {r['window_seconds_median']:.2f} "
                     f"| {r['none_window_seconds_median']:.2f} "
                     f"| {r['vs_none']:.2f}× | {r['first_pass_seconds']:.1f} "
                     f"| {r['first_pass_vs_none']:.2f}× |")
    timed = [r for r in result["rows"] if not r["error"]]
    met = [r for r in timed if r["vs_none"] <= result["goal"]]
    lines += ["", f"## Goal (issue 9): ≤ {result['goal']}× none during the pruning window", "",
              f"* met by {len(met)} of {len(timed)} methods"]
    for r in timed:
        if r["vs_none"] > result["goal"]:
            lines.append(f"* missed: {r['method']} at {r['vs_none']:.2f}×")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = common.argument_parser(__doc__, "pruning_overhead", model_size="tiny")
    parser.add_argument("--quick", action="store_true", help="one method (a smoke run)")
    parser.add_argument("--method", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.method is not None:
        print(json.dumps(measure_one(args)))
        return 0
    result = run(args)
    common.write_results(result, markdown(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
