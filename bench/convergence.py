"""Which optimizers make federated training converge: a small sweep.

  python -m bench.convergence [--rounds=20] [--variants=a,b] [--quick]

Every row is a real `run_experiment.py --pruning=none` run (federated dense,
the default corpus, model and cohort) for `--rounds` rounds with one client /
server optimizer setting, held-out CER/WER at every `--eval_every` rounds.
The last row is the centralized dense run (`--mode=centralized`) trained on
the same number of examples as the federated runs processed (whole epochs,
the nearest count), the reference the federated gap is measured against.

A setting that starts from a seed model (`fedavg_seed_model`) starts from a
centralized run on the built-in corpus's public speakers, neither clients
nor held out (`--num_public_speakers`, `--train_split=public`), trained
first (`--seed_model_epochs`).

Results: `bench/results/convergence.{md,json}`.
"""

from __future__ import annotations

import argparse
import os
import sys

from bench import common
from bench import runs

# Every setting's local batch unless it says otherwise: the default when the
# sweep was run (the batch rows made 2 the ASR default).
BASE_FLAGS = ["--client_batch_size=8"]

# Stands for `--initial_model=` the seed model `seed_model` trains (in a flag list).
SEED_MODEL = "--initial_model={seed_model}"

# name -> (what it is, flags). FedAvg is the old default; the others are the
# standard remedies: a larger client step, server momentum (FedAvgM, Hsu et
# al. 2019) and adaptive server optimizers (FedAdam / FedYogi, Reddi et al.
# 2021, adaptivity tau = --server_epsilon = 1e-3), and LAMB.
VARIANTS = {
    "fedavg": ("client Adam 3e-3, server SGD 1.0 (FedAvg; the old default)", []),
    "client_lr_1e-2": ("client Adam 1e-2, server SGD 1.0",
                       ["--client_learning_rate=0.01"]),
    "fedavgm": ("client Adam 3e-3, server SGD 0.5 + momentum 0.9 (FedAvgM)",
                ["--server_optimizer=sgdm", "--server_learning_rate=0.5",
                 "--server_momentum=0.9"]),
    "fedadam_1e-2": ("client Adam 3e-3, server Adam 1e-2 (FedAdam)",
                     ["--server_optimizer=adam", "--server_learning_rate=0.01"]),
    "fedyogi_1e-2": ("client Adam 3e-3, server Yogi 1e-2 (FedYogi)",
                     ["--server_optimizer=yogi", "--server_learning_rate=0.01"]),
    # LAMB on the server (Pelikan et al., arXiv 2310.00098: the best server
    # optimizer for federated ASR): each tensor moves by about the rate
    # times its own norm per round (trust ratio), tau = --server_epsilon.
    "fedlamb_3e-3": ("client Adam 3e-3, server LAMB 3e-3",
                     ["--server_optimizer=lamb", "--server_learning_rate=0.003"]),
    "fedlamb_3e-2": ("client Adam 3e-3, server LAMB 3e-2",
                     ["--server_optimizer=lamb", "--server_learning_rate=0.03"]),
    "fedlamb_1e-1": ("client Adam 3e-3, server LAMB 1e-1",
                     ["--server_optimizer=lamb", "--server_learning_rate=0.1"]),
    "fedlamb_3e-1": ("client Adam 3e-3, server LAMB 3e-1",
                     ["--server_optimizer=lamb", "--server_learning_rate=0.3"]),
    # LAMB with a larger tau (its step follows the averaged delta's
    # direction where the delta is below tau, not its sign), and with a
    # warm-up of the server rate.
    "fedlamb_1e-1_tau_1e-1": ("client Adam 3e-3, server LAMB 1e-1, tau 1e-1",
                              ["--server_optimizer=lamb", "--server_learning_rate=0.1",
                               "--server_epsilon=0.1"]),
    "fedlamb_1e-1_warmup": ("client Adam 3e-3, server LAMB 1e-1, 5 warm-up rounds, cosine",
                            ["--server_optimizer=lamb", "--server_learning_rate=0.1",
                             "--server_lr_schedule=warmup_cosine",
                             "--server_lr_warmup_rounds=5"]),
    "fedadam_1e-3": ("client Adam 3e-3, server Adam 1e-3 (FedAdam)",
                     ["--server_optimizer=adam", "--server_learning_rate=0.001"]),
    "fedavgm_m0.5": ("client Adam 3e-3, server SGD 1.0 + momentum 0.5",
                     ["--server_optimizer=sgdm", "--server_learning_rate=1.0",
                      "--server_momentum=0.5"]),
    # Client learning-rate decay over the rounds, as the centralized reference
    # decays its rate over its epochs.
    "fedavg_cosine": ("client Adam 3e-3 with cosine decay over the rounds, server SGD 1.0",
                      ["--client_lr_schedule=warmup_cosine"]),
    "fedavg_cosine_6e-3": ("client Adam 6e-3 with cosine decay over the rounds "
                           "(2 warm-up rounds), server SGD 1.0",
                           ["--client_learning_rate=0.006",
                            "--client_lr_schedule=warmup_cosine",
                            "--client_lr_warmup_rounds=2"]),
    # Twice the local steps from the same examples: FedAvg's progress per
    # round is bounded by the clients' sequential steps.
    "client_batch_4": ("client Adam 3e-3, batch 4 (the others: 8), server SGD 1.0",
                       ["--client_batch_size=4"]),
    "client_batch_2": ("client Adam 3e-3, batch 2, server SGD 1.0",
                       ["--client_batch_size=2"]),
    # Pelikan et al.'s client setting (arXiv 2310.00098): plain SGD at a
    # high rate, each client's update clipped to norm 1; and more local
    # epochs from the same clients.
    "client_sgd_0.4_clip_1": ("client SGD 0.4, delta clipped to norm 1, server SGD 1.0",
                              ["--client_optimizer=sgd", "--client_learning_rate=0.4",
                               "--clip_norm=1.0"]),
    "client_sgd_0.1_clip_1": ("client SGD 0.1, delta clipped to norm 1, server SGD 1.0",
                              ["--client_optimizer=sgd", "--client_learning_rate=0.1",
                               "--clip_norm=1.0"]),
    "client_epochs_6": ("client Adam 3e-3, 6 local epochs (the others: 3), server SGD 1.0",
                        ["--client_epochs=6"]),
    # From a seed model (Pelikan et al.: closes most of the gap): FedAvg
    # started from a centralized run on the corpus's public speakers, who
    # are neither clients nor held out (`seed_model`).
    "fedavg_seed_model": ("client Adam 3e-3, server SGD 1.0, from a centralized seed model "
                          "(public speakers)", [SEED_MODEL]),
    "fedavg_seed_model_batch_2": ("client Adam 3e-3, batch 2 (the ASR default), server SGD "
                                  "1.0, from the centralized seed model",
                                  [SEED_MODEL, "--client_batch_size=2"]),
}


def _corpus_flags(args) -> list[str]:
    # Every run reads one corpus: with the public speakers the seed model
    # trains on (the clients and held-out speakers are the same without them).
    flags = [f"--model_size={args.model_size}", f"--seed={args.seed}",
             f"--num_public_speakers={args.public_speakers}", *runs.cache_flags(args)]
    if args.quick:
        flags += ["--num_train_speakers=4", "--num_test_speakers=2",
                  "--utterances_per_speaker=6"]
    return flags


def seed_model(args, out: str) -> runs.Run:
    """The seed model: a centralized dense run on the corpus's
    `--public_speakers` public speakers (not a client's data), evaluated on
    the same held-out speakers."""
    return runs.run_experiment("seed_model", [
        *_corpus_flags(args), "--mode=centralized", "--pruning=none",
        "--train_split=public",
        f"--centralized_epochs={args.seed_model_epochs}", "--eval_every_epochs=1"],
        out, reuse=args.reuse)


def run(args) -> dict:
    out = os.path.join(args.work_dir, "convergence")
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    seed = None
    if any(SEED_MODEL in VARIANTS[name][1] for name in names):
        seed = seed_model(args, out)
    rows, train_utterances = [], None
    for name in names:
        what, flags = VARIANTS[name]
        flags = [f.format(seed_model=seed.run_dir) if f == SEED_MODEL else f for f in flags]
        done = runs.run_experiment(name, [
            *_corpus_flags(args), "--pruning=none", f"--total_rounds={args.rounds}",
            f"--clients_per_round={args.clients}", f"--client_epochs={args.client_epochs}",
            f"--eval_every_rounds={args.eval_every}", *BASE_FLAGS, *flags], out,
            reuse=args.reuse, allow_divergence=True)
        rows.append({"name": name, "what": what, "flags": flags,
                     "cer": done.eval_column("cer"), "wer": done.eval_column("wer"),
                     # A diverged setting is recorded, never scored or ranked.
                     "diverged_round": done.diverged["round"] if done.diverged else None,
                     "examples": done.examples_trained, "train_seconds": done.train_seconds})
        if done.diverged is None:
            train_utterances = done.summary["task"]["train_utterances"]
    finished = [r for r in rows if r["diverged_round"] is None]
    if not finished:
        raise SystemExit("convergence: every setting diverged; nothing to compare with "
                         "the centralized run")
    # Every finished setting processed the same examples (same rounds and cohort).
    epochs = max(1, round(finished[0]["examples"] / train_utterances))
    central = runs.run_experiment("centralized", [
        *_corpus_flags(args), "--mode=centralized", "--pruning=none",
        f"--centralized_epochs={epochs}", "--eval_every_epochs=1"], out, reuse=args.reuse)
    reference = {"epochs": epochs, "examples": central.examples_trained,
                 "cer": central.eval_column("cer"), "wer": central.eval_column("wer"),
                 "train_seconds": central.train_seconds}
    for row in rows:
        row["cer_vs_centralized"] = (None if row["diverged_round"] is not None
                                     else row["cer"][-1][1] / reference["cer"][-1][1])
    best = min(finished, key=lambda r: r["cer"][-1][1])
    seed_row = None if seed is None else {
        "public_speakers": args.public_speakers, "epochs": args.seed_model_epochs,
        "examples": seed.examples_trained, "cer": seed.eval_column("cer"),
        "wer": seed.eval_column("wer"), "train_seconds": seed.train_seconds}
    return common.header({
        "model_size": args.model_size, "rounds": args.rounds, "clients": args.clients,
        "client_epochs": args.client_epochs, "seed": args.seed, "quick": args.quick,
        "train_utterances": train_utterances, "variants": rows, "centralized": reference,
        "seed_model": seed_row, "best": best["name"]})


def markdown(result: dict) -> str:
    evals = [r for r, _ in max((v["cer"] for v in result["variants"]), key=len)]
    ref = result["centralized"]
    lines = [
        "# Convergence: client and server optimizers (federated dense)", "",
        f"Measured {result['date']} on {result['cpus']} CPU cores by "
        "`python -m bench.convergence`"
        + (" --quick (a smoke run: not a result)" if result["quick"] else "")
        + f": real `run_experiment.py --pruning=none` runs, `--model_size="
        f"{result['model_size']}`, {result['clients']} clients per round x "
        f"{result['client_epochs']} local epochs, {result['rounds']} rounds, seed "
        f"{result['seed']}; held-out CER (WER) after the round shown.", "",
        "| setting | " + " | ".join(f"round {r}" for r in evals)
        + " | examples | CER / centralized | training s |",
        "|---|" + "---:|" * len(evals) + "---:|---:|---:|"]
    for row in result["variants"]:
        measured = {r: f"{c:.1%} ({w:.1%})" for (r, c), (_, w) in zip(row["cer"], row["wer"])}
        diverged = row.get("diverged_round")
        cells = [measured.get(r, f"diverged at round {diverged}" if diverged else "")
                 for r in evals]
        best = " **best**" if row["name"] == result["best"] else ""
        ratio = "—" if diverged else f"{row['cer_vs_centralized']:.2f}x"
        lines.append(f"| `{row['name']}`{best}: {row['what']} | " + " | ".join(cells)
                     + f" | {row['examples']:,} | {ratio} | {row['train_seconds']:.0f} |")
    curve = ", ".join(f"epoch {e}: {c:.1%}" for e, c in ref["cer"])
    lines += ["", f"Centralized dense on the same corpus and model, {ref['epochs']} "
              f"epoch(s) = {ref['examples']:,} examples (batch 16, its default schedule): "
              f"held-out CER {curve} ({ref['train_seconds']:.0f} s of training). "
              "*CER / centralized* divides each setting's last CER by the centralized "
              "run's last. *Training s*: the rounds' (epochs') seconds as metrics.csv "
              "recorded them, setup and evaluation excluded. A setting whose training "
              "diverged (`run_experiment.py` stopped it and left `diverged.json`) shows the "
              "round it stopped at and is never ranked; its examples and seconds "
              "count the rounds before it."]
    seed = result.get("seed_model")
    if seed:
        curve = ", ".join(f"epoch {e}: {c:.1%}" for e, c in seed["cer"])
        lines += ["", f"The seed model (`--initial_model` of the settings that name it): "
                  f"centralized dense on the corpus's {seed['public_speakers']} public "
                  f"speakers (`--train_split=public`: neither clients nor held out), "
                  f"{seed['epochs']} epoch(s) = {seed['examples']:,} examples, held-out CER "
                  f"{curve} ({seed['train_seconds']:.0f} s of training). The federated "
                  "settings' examples do not count its own."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="",
                        help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--eval_every", type=int, default=10)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--client_epochs", type=int, default=3)
    parser.add_argument("--model_size", default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--public_speakers", type=int, default=40,
                        help="public speakers the seed model trains on")
    parser.add_argument("--seed_model_epochs", type=int, default=5,
                        help="the seed model's centralized epochs")
    runs.add_run_flags(parser, "convergence")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny corpus, micro model, 2 rounds, 2 settings")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.eval_every, args.clients, args.client_epochs = 2, 1, 2, 1
        args.model_size = "micro"
        args.public_speakers, args.seed_model_epochs = 2, 1
        args.variants = args.variants or "fedavg,fedadam_1e-2"
    unknown = [v for v in args.variants.split(",") if v and v not in VARIANTS]
    if unknown:
        parser.error(f"unknown --variants {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    result = run(args)
    common.write_results(result, markdown(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
