"""Data at scale: memory and round time vs corpus size, the feature cache, workers.

  python -m bench.data_scaling [--speakers=200,1000,2000] [--utterances_per_speaker=10]
                               [--cohorts=8,16] [--quick]

Every row is a real `run_experiment.py` run (a subprocess, so its memory is
its own) on the built-in synthetic corpus, `--pruning=none`, a fixed cohort
(`--cohort`), `--rounds` rounds; round time is the median of the rounds after
the first (which traces the computations).

(a) Corpus size: for each speaker count, the corpus is generated first (not
    timed here), then a *cold* run featurizes it into a fresh feature cache
    and a *warm* run reuses that cache. Peak RSS is VmHWM: the controller's
    (it no longer holds any features) and the TFF worker's (which builds its
    clients' datasets from speaker ids). The goal: flat, at most 1.2x from
    the smallest corpus to the largest.
(b) Feature cache: the cold run's data start (indexing + featurizing,
    `summary.json` resources.data_seconds) vs the warm run's (goal: <= 0.1x).
(c) Workers: the same warm run with 1 and with 2 owned local TFF workers
    (`--local_workers`; the cohort split across them by TFF's mergeable
    context) at each of `--cohorts`.

Results: `bench/results/data_scaling.{md,json}`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import numpy as np

from bench import common
from bench import runs


def _generate(args, speakers: int) -> float:
    """Generates (once) the corpus of `speakers` training speakers; seconds taken."""
    from tasks.asr import synthetic_corpus  # pylint: disable=import-outside-toplevel
    start = time.monotonic()
    synthetic_corpus.ensure_synthetic_corpus(
        args.cache_dir, num_train_speakers=speakers, num_test_speakers=args.test_speakers,
        utterances_per_speaker=args.utterances_per_speaker, seed=0)
    return time.monotonic() - start


def _run(args, name: str, speakers: int, features: str, cohort: int,
         local_workers: int = 1) -> dict:
    """One run_experiment.py run; its measured row."""
    done = runs.run_experiment(name, [
        f"--corpus_cache_dir={args.cache_dir}", f"--feature_cache_dir={features}",
        f"--num_train_speakers={speakers}", f"--num_test_speakers={args.test_speakers}",
        f"--utterances_per_speaker={args.utterances_per_speaker}",
        f"--model_size={args.model_size}", "--pruning=none",
        f"--total_rounds={args.rounds}", f"--clients_per_round={cohort}",
        f"--client_epochs={args.client_epochs}", f"--eval_every_rounds={args.rounds}",
        f"--local_workers={local_workers}"], os.path.join(args.work_dir, "data_scaling"))
    summary = done.summary
    seconds = [float(r["round_seconds"]) for r in done.metrics][1:]
    workers = summary["workers"]
    cache = summary["task"]["feature_cache"]
    row = {
        "name": name, "train_speakers": speakers,
        "train_utterances": summary["task"]["train_utterances"], "cohort": cohort,
        "audio_hours": summary["task"]["train_audio_hours"] + summary["task"]["test_audio_hours"],
        "local_workers": local_workers,
        "data_seconds": summary["resources"]["data_seconds"],
        "files_decoded": cache["train"]["files_decoded"] + cache["test"]["files_decoded"],
        "round_seconds_median": float(np.median(seconds)),
        "controller_peak_rss_mib": summary["resources"]["controller_peak_rss_bytes"] / 2**20,
        "worker_peak_rss_mib": sum(workers["peak_rss_bytes"].values()) / 2**20,
        "computations_per_worker": list(workers["computations"].values()),
        "wall_seconds": done.wall_seconds,
    }
    return row


def run(args) -> dict:
    speakers = [int(s) for s in args.speakers.split(",")]
    generation = {}
    for n in speakers:
        generation[n] = _generate(args, n)
    sizes = []
    for n in speakers:
        features = os.path.join(args.work_dir, "data_scaling_features", str(n))
        shutil.rmtree(features, ignore_errors=True)  # cold: nothing cached yet
        cold = _run(args, f"cold_{n}", n, features, args.cohort)
        warm = _run(args, f"warm_{n}", n, features, args.cohort)
        sizes.append({"speakers": n, "generation_seconds": generation[n],
                      "cold": cold, "warm": warm})
    smallest_features = os.path.join(args.work_dir, "data_scaling_features", str(speakers[0]))
    workers = []
    for cohort in [int(c) for c in args.cohorts.split(",")]:
        pair = {n: _run(args, f"workers{n}_cohort{cohort}", speakers[0], smallest_features,
                        cohort, local_workers=n) for n in (1, 2)}
        workers.append({"cohort": cohort, "one": pair[1], "two": pair[2],
                        "ratio": pair[2]["round_seconds_median"]
                        / pair[1]["round_seconds_median"]})
    total = [s["warm"]["controller_peak_rss_mib"] + s["warm"]["worker_peak_rss_mib"]
             for s in sizes]
    return common.header({
        "model_size": args.model_size, "utterances_per_speaker": args.utterances_per_speaker,
        "cohort": args.cohort, "rounds": args.rounds, "client_epochs": args.client_epochs,
        "sizes": sizes, "workers": workers,
        "rss_ratio_largest_to_smallest": total[-1] / total[0],
        "warm_to_cold_data_start": [s["warm"]["data_seconds"] / s["cold"]["data_seconds"]
                                    for s in sizes],
    })


def markdown(result: dict) -> str:
    lines = [
        "# Data at scale: memory, feature cache and workers",
        "",
        f"Measured {result['date']} on {result['cpus']} CPU cores ({result['machine']}) by "
        "`python -m bench.data_scaling`: real `run_experiment.py` runs on the built-in "
        f"corpus ({result['utterances_per_speaker']} utterances per speaker), "
        f"`--pruning=none`, `--model_size={result['model_size']}`, "
        f"{result['rounds']} rounds of {result['client_epochs']} local epoch(s); round "
        "time is the median after the first round. Peak RSS is VmHWM.",
        "",
        f"## (a) Memory and round time vs corpus size (cohort {result['cohort']}, warm cache)",
        "",
        "| train speakers | utterances | controller MiB | worker MiB | total MiB "
        "| round s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["sizes"]:
        w = s["warm"]
        lines.append(
            f"| {s['speakers']} | {w['train_utterances']} | {w['controller_peak_rss_mib']:.0f} "
            f"| {w['worker_peak_rss_mib']:.0f} "
            f"| {w['controller_peak_rss_mib'] + w['worker_peak_rss_mib']:.0f} "
            f"| {w['round_seconds_median']:.2f} |")
    ratio = result["rss_ratio_largest_to_smallest"]
    lines += ["", f"Total peak RSS, largest corpus / smallest: **{ratio:.2f}x** "
              f"(goal <= 1.2x: {'met' if ratio <= 1.2 else 'NOT met'}).", "",
              "## (b) Feature cache: data start, first run vs rerun", "",
              "| train speakers | audio h | corpus generation s "
              "| first run: data s (files decoded) | audio h featurized per hour "
              "| rerun: data s (files decoded) | rerun / first |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for s, r in zip(result["sizes"], result["warm_to_cold_data_start"]):
        cold = s["cold"]
        lines.append(
            f"| {s['speakers']} | {cold['audio_hours']:.2f} | {s['generation_seconds']:.0f} "
            f"| {cold['data_seconds']:.1f} ({cold['files_decoded']}) "
            f"| {cold['audio_hours'] * 3600 / cold['data_seconds']:.0f} "
            f"| {s['warm']['data_seconds']:.1f} ({s['warm']['files_decoded']}) | {r:.3f} |")
    worst = max(result["warm_to_cold_data_start"])
    lines += ["", f"Worst rerun / first: **{worst:.3f}** (goal <= 0.1: "
              f"{'met' if worst <= 0.1 else 'NOT met'}).", "",
              f"## (c) One vs two local TFF workers ({result['sizes'][0]['speakers']} "
              "speakers, warm cache)", "",
              "| cohort | 1 worker: round s | 2 workers: round s | 2 / 1 "
              "| worker MiB (1 / 2 together) |",
              "|---:|---:|---:|---:|---:|"]
    for w in result["workers"]:
        lines.append(
            f"| {w['cohort']} | {w['one']['round_seconds_median']:.2f} "
            f"| {w['two']['round_seconds_median']:.2f} | {w['ratio']:.2f} "
            f"| {w['one']['worker_peak_rss_mib']:.0f} / {w['two']['worker_peak_rss_mib']:.0f} |")
    lines += ["", f"Both workers share this machine's {result['cpus']} cores: a second "
              "worker trains another part of the cohort at the same time, which helps as "
              "long as one worker leaves cores idle (a small model's steps are small ops) "
              "and stops helping once one worker's TensorFlow keeps every core busy. "
              "Across machines or pods each worker brings its own cores "
              "(docs/distributed.md)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speakers", default="200,1000,2000")
    parser.add_argument("--utterances_per_speaker", type=int, default=10)
    parser.add_argument("--test_speakers", type=int, default=10)
    parser.add_argument("--cohort", type=int, default=8)
    parser.add_argument("--cohorts", default="8,16")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--client_epochs", type=int, default=1)
    parser.add_argument("--model_size", default="tiny")
    parser.add_argument("--cache_dir", default=common.data_lib.DEFAULT_CACHE_DIR)
    parser.add_argument("--work_dir", default="/tmp/tff_prune_bench")
    parser.add_argument("--out", default=os.path.join(common.RESULTS, "data_scaling"))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 tiny corpora, micro model, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.speakers, args.utterances_per_speaker, args.test_speakers = "4,8", 3, 2
        args.cohort, args.cohorts, args.rounds, args.model_size = 2, "2", 2, "micro"
    result = run(args)
    common.write_results(result, markdown(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
