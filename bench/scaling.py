"""How a round scales with the cohort and the model: round time and peak RSS.

  python -m bench.scaling [--model_sizes=tiny,small] [--cohorts=4,8,16,32] [--quick]

Each (model size, cohort) runs in its own process (so its peak memory is
its own): the default method (structured column pruning, masks at 50% after
round 1, compact rounds), round 2 untimed (it builds the compact round),
then `--repeats` timed rounds, median. Peak RSS is read from `/proc`
(VmHWM) for the controller and for the TFF worker that runs the clients'
training; their sum is what the machine must hold. The slope of round time
over the cohort (least squares) is seconds per client; `linearity` is the
largest relative gap between a measured round time and that line (a round
linear in its cohort has gaps near 0).
Results: `bench/results/scaling.{md,json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TFF_PRUNE_TF_LOG_LEVEL", "3")

# pylint: disable=wrong-import-position
import numpy as np

from bench import common


def measure_one(args) -> dict:
    """One (model size, cohort) in this process; returns its row."""
    from tff_prune.pruning import config as config_lib  # pylint: disable=import-outside-toplevel
    from tff_prune.program import experiment_config  # pylint: disable=import-outside-toplevel
    from tff_prune.program import federated_driver  # pylint: disable=import-outside-toplevel
    from tff_prune.federated import process as process_lib  # pylint: disable=import-outside-toplevel
    from tff_prune.runtime import owned as runtime  # pylint: disable=import-outside-toplevel
    from tff_prune.pruning import schedule as schedule_lib  # pylint: disable=import-outside-toplevel

    task = common.load_task(args.model_size, args.num_train_speakers, args.cache_dir)
    data = common.cohort_data(task, args.cohort, args.client_epochs)
    pruning = config_lib.PruningConfig(
        scheme="structured", structure="column",
        schedule=schedule_lib.PruningSchedule(
            kind="constant", target_sparsity=0.5, begin_round=1, end_round=1,
            every_rounds=1, refine_rounds=0))
    with runtime.local_runtime(log_dir=os.path.join(args.work_dir, "logs")) as rt:
        built = process_lib.build_federated_pruning_process(
            task, pruning, common.client_optimizer(), common.server_optimizer())
        rounds = federated_driver.build_rounds(
            experiment_config.ExperimentConfig(pruning=pruning), task, built)
        state = built.process.initialize()
        for _ in range(2):  # masks, then the compact round's first build
            state = rounds.next(state, data).state
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            state = rounds.next(state, data).state
            seconds.append(time.perf_counter() - start)
        worker_rss = sum(common.peak_rss_mib(pid) for pid in rt.worker_pids)
    controller_rss = common.peak_rss_mib(os.getpid())
    return {"model_size": args.model_size, "cohort": args.cohort,
            "round_seconds_median": float(np.median(seconds)),
            "controller_peak_rss_mib": round(controller_rss, 1),
            "worker_peak_rss_mib": round(worker_rss, 1),
            "total_peak_rss_mib": round(controller_rss + worker_rss, 1)}


def _fit(rows: list[dict]) -> dict:
    cohorts = np.array([r["cohort"] for r in rows], float)
    seconds = np.array([r["round_seconds_median"] for r in rows], float)
    slope, intercept = np.polyfit(cohorts, seconds, 1)
    line = slope * cohorts + intercept
    rss = np.array([r["total_peak_rss_mib"] for r in rows], float)
    rss_slope, _ = np.polyfit(cohorts, rss, 1)
    return {"seconds_per_client": float(slope), "intercept_seconds": float(intercept),
            "linearity": float(np.max(np.abs(seconds - line) / seconds)),
            "rss_mib_per_client": float(rss_slope)}


def run(args) -> dict:
    rows, fits = [], {}
    for model_size in args.model_sizes.split(","):
        size_rows = []
        for cohort in [int(c) for c in args.cohorts.split(",")]:
            size_rows.append(common.row_in_subprocess(
                "bench.scaling", ["--one", f"--model_size={model_size}", f"--cohort={cohort}"],
                args, f"{model_size} at cohort {cohort}"))
        rows += size_rows
        if len(size_rows) >= 2:
            fits[model_size] = _fit(size_rows)
    return common.header({"client_epochs": args.client_epochs, "repeats": args.repeats,
                          "rows": rows, "fits": fits})


def markdown(result: dict) -> str:
    lines = [
        f"# Scaling: round time and peak memory vs cohort ({result['client_epochs']} local "
        f"epoch(s), median of {result['repeats']} rounds)",
        "",
        f"Measured {result['date']} on {result['cpus']} CPU cores ({result['machine']}) by "
        "`python -m bench.scaling`: structured column pruning at 50% in compact rounds, one "
        "process per row. Peak RSS: VmHWM of the controller and of the TFF worker.",
        "",
        "| model | cohort | round s | s per client | controller MiB | worker MiB | total MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model_size']} | {r['cohort']} | {r['round_seconds_median']:.2f} "
            f"| {r['round_seconds_median'] / r['cohort']:.2f} "
            f"| {r['controller_peak_rss_mib']:.0f} | {r['worker_peak_rss_mib']:.0f} "
            f"| {r['total_peak_rss_mib']:.0f} |")
    lines += ["", "## Slopes (least squares over the cohorts)", ""]
    for model_size, fit in result["fits"].items():
        lines.append(
            f"* {model_size}: {fit['seconds_per_client']:.2f} s per client plus "
            f"{fit['intercept_seconds']:.2f} s per round; largest gap to the line "
            f"{100 * fit['linearity']:.0f}% of the round; peak memory "
            f"{fit['rss_mib_per_client']:+.1f} MiB per client")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = common.argument_parser(__doc__, "scaling", model_size=None)
    parser.add_argument("--model_sizes", default="tiny,small")
    parser.add_argument("--cohorts", default="4,8,16,32")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model_size", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--cohort", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args)))
        return 0
    result = run(args)
    common.write_results(result, markdown(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
