"""Real `run_experiment.py` runs for the benches that compare whole experiments.

Each run is a subprocess (its memory and TFF computations its own), exactly
as a user runs it; `Run` holds what it left behind: `summary.json`, and the
rows of `metrics.csv` and `eval.csv`. A sweep that asks for it gets a run
whose training diverged back as such (`Run.diverged`: the program's
`diverged.json`, no summary) instead of a failed bench.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Optional

from bench import common
from tff_prune.program import divergence


@dataclasses.dataclass
class Run:
    """What one finished run left in its experiment folder."""

    name: str
    run_dir: str
    summary: dict
    metrics: list[dict]   # metrics.csv rows (per round, or per epoch)
    evals: list[dict]     # eval.csv rows
    wall_seconds: float
    # A diverged run: its `diverged.json` (round, loss, the line printed).
    # Its summary is empty and its rows stop before the diverged round.
    diverged: Optional[dict] = None

    @property
    def train_seconds(self) -> float:
        """Seconds spent in rounds (or epochs), as metrics.csv recorded them:
        setup and evaluation excluded, and kept when a finished run is reused."""
        column = "round_seconds" if self.metrics and "round_seconds" in self.metrics[0] \
            else "epoch_seconds"
        return float(sum(float(r[column]) for r in self.metrics))

    @property
    def final(self) -> dict:
        """summary.json's final held-out metrics (cer, wer, sparsity...)."""
        return self.summary["final"]

    @property
    def examples_trained(self) -> int:
        """Training examples processed (federated: summed over clients and
        local epochs, as the rounds reported them; centralized: per epoch)."""
        if self.diverged is not None or (self.metrics and "num_examples" in self.metrics[0]):
            # (A run that diverged in its first round has no rows: 0.)
            return int(sum(float(r["num_examples"]) for r in self.metrics))
        epochs = len(self.metrics)
        return int(epochs * self.summary["task"]["train_utterances"])

    def eval_column(self, name: str) -> list[tuple[int, float]]:
        """(round or epoch, value) of an eval.csv column."""
        key = "round" if self.evals and "round" in self.evals[0] else "epoch"
        return [(int(r[key]), float(r[name])) for r in self.evals]


def _read_csv(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def load_run(name: str, run_dir: str, wall_seconds: Optional[float] = None) -> Run:
    """A finished run's files (`wall_seconds`: else summary.json's)."""
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    return Run(name, run_dir, summary, _read_csv(os.path.join(run_dir, "metrics.csv")),
               _read_csv(os.path.join(run_dir, "eval.csv")),
               summary["wall_seconds"] if wall_seconds is None else wall_seconds)


def load_diverged_run(name: str, run_dir: str, wall_seconds: float) -> Run:
    """A run that stopped diverged: its record and the rows before it."""
    record = divergence.read_record(run_dir)
    if record is None:
        raise SystemExit(f"{name}: exit code {divergence.EXIT_CODE} (diverged) but no "
                         f"{divergence.RECORD} in {run_dir}")
    return Run(name, run_dir, {}, _read_csv(os.path.join(run_dir, "metrics.csv")),
               _read_csv(os.path.join(run_dir, "eval.csv")), wall_seconds, diverged=record)


def run_experiment(name: str, flags: list[str], out_dir: str, *, reuse: bool = False,
                   timeout_s: float = 7200, allow_divergence: bool = False) -> Run:
    """`run_experiment.py flags...` as experiment `name` under `out_dir`;
    raises SystemExit with the run's last error lines if it fails. With
    `allow_divergence`, a run whose training diverged comes back with
    `Run.diverged` set (what a sweep records) instead.

    An earlier run of that name is replaced, or with `reuse` resumed by the
    program itself: a finished one only re-evaluates, and one with other
    settings is refused (so a bench can be rerun after an interruption).
    """
    run_dir = os.path.join(out_dir, name)
    resume = reuse and os.path.exists(os.path.join(run_dir, "config.json"))
    command = [sys.executable, os.path.join(common.REPO, "run_experiment.py"), *flags,
               "--progress=off", "--export_dir=none", f"--root_output_dir={out_dir}",
               f"--experiment_name={name}", *([] if resume else ["--overwrite"])]
    start = time.monotonic()
    done = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True,
                          timeout=timeout_s)
    if allow_divergence and done.returncode == divergence.EXIT_CODE:
        run = load_diverged_run(name, run_dir, time.monotonic() - start)
        print(f"[bench] {name}: {run.wall_seconds:.0f} s, diverged at round "
              f"{run.diverged['round']}", file=sys.stderr, flush=True)
        return run
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({' '.join(flags)}):\n{done.stderr[-3000:]}")
    run = load_run(name, run_dir, time.monotonic() - start)
    print(f"[bench] {name}: {run.wall_seconds:.0f} s{' (reused)' if resume else ''}, final "
          f"{ {k: v for k, v in run.final.items() if isinstance(v, float)} }",
          file=sys.stderr, flush=True)
    return run


def add_run_flags(parser: argparse.ArgumentParser, results_name: str) -> None:
    """The flags of a bench made of whole runs: caches, work folder, reuse, output."""
    parser.add_argument("--corpus_cache_dir", default="",
                        help="run_experiment.py's --corpus_cache_dir (default: its own)")
    parser.add_argument("--feature_cache_dir", default="",
                        help="run_experiment.py's --feature_cache_dir (default: its own)")
    parser.add_argument("--work_dir", default="/tmp/tff_prune_bench")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse finished runs of the same settings in --work_dir "
                             "(e.g. after an interruption)")
    parser.add_argument("--out", default=os.path.join(common.RESULTS, results_name),
                        help="path without extension: writes .md and .json")


def cache_flags(args: argparse.Namespace) -> list[str]:
    """run_experiment.py's cache flags from `add_run_flags`' values."""
    return [f"--{name}={getattr(args, name)}" for name in
            ("corpus_cache_dir", "feature_cache_dir") if getattr(args, name)]
