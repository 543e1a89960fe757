"""The paper's findings, run side by side with seeds: do they hold here?

  python -m bench.findings [--seeds=0,1] [--quick] [--reuse]
  python -m bench.findings --merge=seed0.json,seed1.json

`make findings` runs one process per seed side by side (most of a run's
time is single-threaded setup and evaluation, so two share 2 cores well)
and merges their results.

Zhao et al. (Interspeech 2022, arXiv 2209.06359) compare pruning schemes, allocations and mask
refinement under federated learning. This bench runs each arm as a real
`run_experiment.py` run (the preset in `bazel_configs/` that reproduces it
at full scale, at this bench's reduced scale: `SCALE`), with every seed,
and judges each finding on the held-out CER **paired by seed** (both arms
of a seed share the corpus, which the seed draws, the initial weights and
the client sampling):

* a "better" finding *holds* when its arm is better for every seed,
  *does not hold* when it is worse for every seed, and is *within seed
  noise* when the seeds disagree;
* a "similar" finding (pruned ≈ dense) holds when the pruned arm's mean CER
  is within `--similar_within` (relative) of the dense arm's.

Federated vs centralized pruning is judged on what pruning costs each (CER
pruned / CER dense of the same kind of training, same examples), because
federated training of this corpus learns more slowly than centralized
training whatever the masks (bench/results/convergence.md).

Results: `bench/results/findings.{md,json}` and the report tool's
WER-vs-sparsity plot of all runs, `bench/results/findings_wer_vs_sparsity.png`.
`--quick` (micro model, a tiny corpus, 3 rounds, one seed) only checks that
everything runs: its verdicts mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from typing import Optional

from bench import common
from bench import runs
from tff_prune.program import divergence

# The reduced scale every arm runs at (flags on top of each preset): the
# default corpus and small model, a smaller cohort, 20 rounds pruning over
# rounds 6-12 (every 2), refinement to round 16, fine-tuning to 20. The
# centralized arms train on as many examples (whole epochs).
SCALE = ["--clients_per_round=5", "--client_epochs=2", "--total_rounds=20",
         # The batch the table was measured with (the ASR default is now 2).
         "--client_batch_size=8",
         # Clients train the masked full-size model: the same results as
         # compact rounds (README), without building a compact round after
         # every mask update, which would double a pruned run's time here.
         "--client_model=masked",
         "--prune_begin_round=6", "--prune_end_round=12", "--prune_every_rounds=2",
         "--refine_rounds=4", "--eval_every_rounds=20", "--eval_every_epochs=1"]
QUICK_SCALE = ["--model_size=micro", "--num_train_speakers=4", "--num_test_speakers=2",
               "--utterances_per_speaker=6", "--clients_per_round=2", "--client_epochs=1",
               "--total_rounds=3", "--prune_begin_round=1", "--prune_end_round=2",
               "--prune_every_rounds=1", "--refine_rounds=0", "--eval_every_rounds=3",
               "--eval_every_epochs=1", "--client_batch_size=8", "--centralized_batch_size=4"]


@dataclasses.dataclass(frozen=True)
class Arm:
    """One configuration: the preset it reproduces and its flags here."""

    name: str
    preset: str
    flags: tuple[str, ...] = ()
    centralized: bool = False


ARMS = (
    Arm("dense", "fedavg_dense"),
    Arm("column_25", "fedprune_structured_25"),
    Arm("column_50", "fedprune_structured"),
    Arm("column_75", "fedprune_structured_75"),
    Arm("row_50", "fedprune_row"),
    Arm("half_column_50", "fedprune_half_column"),
    Arm("half_row_50", "fedprune_half_row"),
    Arm("adaptive_50", "fedprune_structured_adaptive"),
    Arm("global_50", "fedprune_structured_global"),
    Arm("fixed_50", "policy_fixed"),
    Arm("client_vote_50", "policy_client_vote"),
    Arm("taylor_50", "importance_taylor"),
    Arm("centralized_dense", "centralized_dense", centralized=True),
    Arm("centralized_column_50", "centralized_pruning", centralized=True),
)
ARMS_BY_NAME = {arm.name: arm for arm in ARMS}


@dataclasses.dataclass(frozen=True)
class Finding:
    """A claim, as two arms compared on held-out CER.

    kind "better": `arm` has a lower CER than `other`; "similar": `arm`'s
    CER is within the tolerance of `other`'s; "cheaper_pruning": pruning
    costs `arm` (CER / CER of `arm_dense`) less than it costs `other`
    (CER / CER of `other_dense`).
    """

    claim: str
    paper: str
    kind: str
    arm: str
    other: str
    arm_dense: str = ""
    other_dense: str = ""


FINDINGS = (
    Finding("structured column pruning at 25% ≈ dense", "pruned ≈ full model",
            "similar", "column_25", "dense"),
    Finding("structured column pruning at 50% ≈ dense", "pruned ≈ full model",
            "similar", "column_50", "dense"),
    Finding("structured column pruning at 75% ≈ dense", "pruned ≈ full model",
            "similar", "column_75", "dense"),
    Finding("columns beat rows (50%)", "columns win", "better", "column_50", "row_50"),
    Finding("whole columns beat half columns (50%)", "columns win", "better",
            "column_50", "half_column_50"),
    Finding("whole columns beat half rows (50%)", "columns win", "better",
            "column_50", "half_row_50"),
    Finding("whole rows beat half rows (50%)", "(not claimed)", "better",
            "row_50", "half_row_50"),
    Finding("adaptive allocation beats uniform (50%)", "adaptive wins", "better",
            "adaptive_50", "column_50"),
    Finding("adaptive allocation beats global (50%)", "adaptive wins", "better",
            "adaptive_50", "global_50"),
    Finding("mask refinement (server) beats fixed masks", "refinement wins", "better",
            "column_50", "fixed_50"),
    Finding("federated pruning costs less than centralized pruning (50%, same schedule "
            "and examples)", "clients' data can pick better masks", "cheaper_pruning",
            "column_50", "centralized_column_50", "dense", "centralized_dense"),
    Finding("client Taylor importance beats magnitude (50%)", "(not claimed)", "better",
            "taylor_50", "column_50"),
    Finding("server-decided masks beat client votes (50%)", "(not claimed)", "better",
            "column_50", "client_vote_50"),
)


def _flagfile(preset: str) -> str:
    return f"--flagfile={os.path.join(common.REPO, 'bazel_configs', preset + '.cfg')}"


def _centralized_epochs(federated_examples: int, train_utterances: int) -> int:
    return max(1, round(federated_examples / train_utterances))


def run_arms(args, arms: list[Arm], seeds: list[int]) -> dict[str, list[dict]]:
    """Every arm with every seed (federated arms first: the centralized ones
    train on as many examples as a federated run processed)."""
    out = os.path.join(args.work_dir, "findings")
    if not args.reuse:
        shutil.rmtree(out, ignore_errors=True)  # the plot shows this run's experiments only
    shared = [*(QUICK_SCALE if args.quick else SCALE), *runs.cache_flags(args)]
    results: dict[str, list[dict]] = {}
    examples: Optional[tuple[int, int]] = None  # (examples, train utterances)
    for arm in sorted(arms, key=lambda a: a.centralized):
        for seed in seeds:
            flags = [_flagfile(arm.preset), *shared, f"--seed={seed}", *arm.flags]
            if arm.centralized:
                if examples is None:
                    raise SystemExit("findings: centralized arms need a federated arm "
                                     "(their examples are matched to it)")
                flags.append(f"--centralized_epochs={_centralized_epochs(*examples)}")
            done = runs.run_experiment(f"{arm.name}_seed{seed}", flags, out,
                                       reuse=args.reuse, allow_divergence=True)
            if not arm.centralized and examples is None and done.diverged is None:
                examples = (done.examples_trained, done.summary["task"]["train_utterances"])
            results.setdefault(arm.name, []).append(_row(seed, done))
    return results


def _row(seed: int, done: runs.Run) -> dict:
    if done.diverged is not None:
        # Recorded, never scored: no CER of a run that did not finish.
        return {"seed": seed, "diverged_round": done.diverged["round"], "cer": None,
                "wer": None, "sparsity": None, "examples": done.examples_trained,
                "train_seconds": done.train_seconds}
    return {"seed": seed, "cer": done.final["cer"], "wer": done.final["wer"],
            "sparsity": done.final.get("sparsity", 0.0),
            "examples": done.examples_trained, "train_seconds": done.train_seconds}


def collect_arms(args, arms: list[Arm], seeds: list[int]) -> dict[str, list[dict]]:
    """The runs of `arms` x `seeds` already finished in --work_dir (by benches
    stopped before their end), without running anything."""
    out = os.path.join(args.work_dir, "findings")
    results: dict[str, list[dict]] = {}
    for arm in arms:
        for seed in seeds:
            run_dir = os.path.join(out, f"{arm.name}_seed{seed}")
            if os.path.exists(os.path.join(run_dir, "summary.json")):
                results.setdefault(arm.name, []).append(
                    _row(seed, runs.load_run(arm.name, run_dir)))
            elif os.path.exists(os.path.join(run_dir, divergence.RECORD)):
                results.setdefault(arm.name, []).append(
                    _row(seed, runs.load_diverged_run(arm.name, run_dir, 0.0)))
    return results


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def judge(finding: Finding, results: dict[str, list[dict]],
          similar_within: float) -> Optional[dict]:
    """The finding's numbers and verdict, or None if an arm did not run."""
    needed = [finding.arm, finding.other, finding.arm_dense, finding.other_dense]
    if any(name and name not in results for name in needed):
        return None

    def cer(name: str) -> dict[int, float]:
        # Diverged runs have no CER: their seeds are not compared.
        return {r["seed"]: r["cer"] for r in results[name] if r["cer"] is not None}

    a, b = cer(finding.arm), cer(finding.other)
    if finding.kind == "cheaper_pruning":
        a_dense, b_dense = cer(finding.arm_dense), cer(finding.other_dense)
        a = {s: a[s] / a_dense[s] for s in a if s in a_dense}
        b = {s: b[s] / b_dense[s] for s in b if s in b_dense}
    seeds = sorted(set(a) & set(b))
    # > 0: the claimed arm is better (lower CER, or lower pruning cost).
    margins = [b[s] - a[s] for s in seeds]
    row = {"claim": finding.claim, "paper": finding.paper, "kind": finding.kind,
           "arm": finding.arm, "other": finding.other, "seeds": seeds,
           "arm_values": [a[s] for s in seeds], "other_values": [b[s] for s in seeds],
           "margins": margins,
           "diverged": sorted({f"{name} seed {r['seed']} (round {r['diverged_round']})"
                               for name in needed if name for r in results[name]
                               if r["cer"] is None})}
    if not seeds:
        row["verdict"] = "not judged: diverged"
    elif finding.kind == "similar":
        ratio = _mean(row["arm_values"]) / _mean(row["other_values"])
        row["ratio"] = ratio
        row["verdict"] = ("holds" if ratio <= 1 + similar_within
                          else "does not hold")
    elif all(m > 0 for m in margins):
        row["verdict"] = "holds"
    elif all(m < 0 for m in margins):
        row["verdict"] = "does not hold"
    else:
        row["verdict"] = "within seed noise"
    return row


def _result(args, arms: list[Arm], seeds: list[int], results: dict[str, list[dict]],
            wall_seconds: Optional[float], processes: int = 1) -> dict:
    """The result file's content (`wall_seconds`: None for collected runs)."""
    findings = [row for f in FINDINGS
                if (row := judge(f, results, args.similar_within)) is not None]
    plot = _plot(args, os.path.join(args.work_dir, "findings"))
    return common.header({
        "quick": args.quick, "seeds": seeds,
        "scale": QUICK_SCALE if args.quick else SCALE,
        "similar_within": args.similar_within,
        "arms": [{"name": a.name, "preset": a.preset, "flags": list(a.flags),
                  "centralized": a.centralized, "runs": results[a.name]} for a in arms],
        "findings": findings, "plot": plot, "wall_seconds": wall_seconds,
        "processes": processes, "reused": args.reuse})


def run(args) -> dict:
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = ([ARMS_BY_NAME[n] for n in args.arms.split(",")] if args.arms else list(ARMS))
    start = time.monotonic()
    if args.collect:
        results = collect_arms(args, arms, seeds)
        arms = [a for a in arms if a.name in results]
        return _result(args, arms, seeds, results, None)
    results = run_arms(args, arms, seeds)
    return _result(args, arms, seeds, results, time.monotonic() - start)


def merge(args, paths: list[str]) -> dict:
    """One result from benches run side by side (e.g. one process per seed,
    `--seeds=0` and `--seeds=1` with the same --work_dir and --reuse)."""
    parts = []
    for path in paths:
        with open(path) as f:
            parts.append(json.load(f))
    if len({json.dumps(p["scale"]) for p in parts}) != 1:
        raise SystemExit("findings: --merge needs results of the same scale")
    results: dict[str, list[dict]] = {}
    for part in parts:
        for arm in part["arms"]:
            results.setdefault(arm["name"], []).extend(arm["runs"])
    arms = [a for a in ARMS if a.name in results]
    seeds = sorted({r["seed"] for runs_ in results.values() for r in runs_})
    args.quick = parts[0]["quick"]
    walls = [p["wall_seconds"] for p in parts]
    return _result(args, arms, seeds, results,
                   None if None in walls else max(walls), processes=len(parts))


def _plot(args, root: str) -> Optional[str]:
    """The report tool's WER-vs-sparsity plot of every run, next to the results."""
    from tff_prune import report  # pylint: disable=import-outside-toplevel
    try:
        built = report.build_report(root)
    except report.ReportError as e:
        print(f"[bench] no plot: {e}", file=sys.stderr)
        return None
    source = [p for p in built.plot_paths if os.path.basename(p) == "wer_vs_sparsity.png"]
    if not source:
        return None
    target = args.out + "_wer_vs_sparsity.png"
    shutil.copyfile(source[0], target)
    return os.path.relpath(target, os.path.dirname(args.out))


def _spread(values: list[Optional[float]]) -> str:
    """Mean ± standard deviation (min–max) of the finished runs' values."""
    diverged = sum(v is None for v in values)
    values = [v for v in values if v is not None]
    note = f" ({diverged} diverged)" if diverged else ""
    if not values:
        return "diverged"
    return _spread_of(values) + note


def _mean_sparsity(got: list[dict]) -> str:
    finished = [r["sparsity"] for r in got if r["sparsity"] is not None]
    return f"{_mean(finished):.2f}" if finished else "—"


def _spread_of(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1%}"
    return (f"{_mean(values):.1%} ± {statistics.stdev(values):.1%} "
            f"({min(values):.1%}–{max(values):.1%})")


def markdown(result: dict) -> str:
    seeds = result["seeds"]
    lines = [
        "# The paper's findings, here",
        "",
        f"Measured {result['date']} on {result['cpus']} CPU cores by "
        "`python -m bench.findings`"
        + (" --quick (a smoke run: its verdicts mean nothing)" if result["quick"] else "")
        + (f" in {result['wall_seconds'] / 60:.0f} min" if result["wall_seconds"]
           else ", collected from the finished runs of benches run side by side")
        + (f" ({result['processes']} processes side by side, merged with --merge)"
           if result.get("processes", 1) > 1 else "")
        + (" (with --reuse: runs finished earlier were reused)" if result["reused"] else "")
        + ": every arm is a real "
        f"`run_experiment.py` run of its preset at this scale "
        f"(`{' '.join(result['scale'])}`), seeds {', '.join(map(str, seeds))}; "
        "held-out CER and WER of the final model, mean ± standard deviation "
        "(min–max) over the seeds. Centralized arms train on as many examples as "
        "a federated run processed.",
        "",
        "## Findings",
        "",
        "| finding | the paper | here: CER (claimed arm vs other, per seed) | verdict |",
        "|---|---|---|---|",
    ]
    for row in result["findings"]:
        pct = row["kind"] != "cheaper_pruning"
        fmt = (lambda v: f"{v:.1%}") if pct else (lambda v: f"{v:.2f}×")
        pairs = "; ".join(f"seed {s}: {fmt(x)} vs {fmt(y)}" for s, x, y in zip(
            row["seeds"], row["arm_values"], row["other_values"]))
        if row["kind"] == "similar":
            pairs += f" (mean ratio {row['ratio']:.2f}×)"
        if row["kind"] == "cheaper_pruning":
            pairs = "CER pruned / dense: " + pairs
        if row.get("diverged"):
            pairs += f" (not compared, diverged: {', '.join(row['diverged'])})"
        lines.append(f"| {row['claim']} (`{row['arm']}` vs `{row['other']}`) "
                     f"| {row['paper']} | {pairs} | **{row['verdict']}** |")
    lines += [
        "",
        f"*Holds* for a \"beats\" finding: better on every seed; *does not hold*: "
        f"worse on every seed; *within seed noise*: the seeds disagree. \"≈ dense\" "
        f"holds within {result['similar_within']:.0%} (relative) of the dense CER. "
        "A run whose training diverged is recorded as such and its seed is not "
        "compared.",
        "",
        "## Every arm",
        "",
        "| arm | preset (full scale) | held-out CER | held-out WER | sparsity | examples "
        "| training min per run |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for arm in result["arms"]:
        got = arm["runs"]
        flags = f" {' '.join(arm['flags'])}" if arm["flags"] else ""
        lines.append(
            f"| `{arm['name']}` | `bazel_configs/{arm['preset']}.cfg`{flags} "
            f"| {_spread([r['cer'] for r in got])} | {_spread([r['wer'] for r in got])} "
            f"| {_mean_sparsity(got)} | {got[0]['examples']:,} "
            f"| {_mean([r['train_seconds'] for r in got]) / 60:.1f} |")
    if result["plot"]:
        lines += ["", f"![WER vs sparsity, every run]({result['plot']})"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--arms", default="",
                        help=f"comma-separated subset of: {', '.join(ARMS_BY_NAME)}")
    parser.add_argument("--similar_within", type=float, default=0.10)
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: judge the runs already finished in --work_dir")
    parser.add_argument("--merge", default="",
                        help="comma-separated findings .json files of benches run side by "
                             "side (same --work_dir): judge them as one run, run nothing")
    runs.add_run_flags(parser, "findings")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: micro model, tiny corpus, 3 rounds, seed 0")
    args = parser.parse_args(argv)
    unknown = [n for n in args.arms.split(",") if n and n not in ARMS_BY_NAME]
    if unknown:
        parser.error(f"unknown --arms {', '.join(unknown)}; known: {', '.join(ARMS_BY_NAME)}")
    if args.quick and args.seeds == "0,1":
        args.seeds = "0"
    result = merge(args, args.merge.split(",")) if args.merge else run(args)
    common.write_results(result, markdown(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
