"""What a federated round costs, side by side: compact and sparse rounds vs dense.

  python -m bench.round_costs [--model_size=small] [--quick | --floor_only]

In one process, with one cohort (the first `--clients` training speakers,
`--client_epochs` local epochs, batch 8, client Adam 3e-3), it builds:

* orchestration: our process with `--pruning=none`, TFF's own
  `tff.learning.algorithms.build_weighted_fed_avg` on the same model and loss
  (`TaskVariableModel`), and a plain Keras-free TF loop running the same client
  steps (same optimizer, data and example weighting) without TFF;
* compact payoff: structured column pruning at 50% and 75% in compact rounds
  and in masked rounds (full-size model, sparse wire), against dense;
* sparse communication: unstructured pruning at 50/80/90% (masked rounds,
  sparse wire);
* the orchestration floor: the dense round and the compact 50% round again
  (their own states), every client with an empty dataset: all a round costs
  besides the clients' arithmetic (TFF's calls, the wire, aggregation, the
  server update, our Python). `--floor_only` runs just these four;
* the clients' own arithmetic: the same cohort's local training (every
  client's batches, its optimizer, its masks) as one TFF-free `tf.function`
  per client, for the dense, masked 50%, compact 50% and compact 75% client
  models (`bench.client_cost.client_model`: masks from one magnitude
  decision at the same sparsity). `--compute_only` runs just dense, masked
  50%, compact 50% and compact 75% rounds, these client loops and the floors.

Pruned variants reach their masks in round 1 (constant schedule) and keep
them; a second untimed round compiles their compact or sparse computation.
Then every variant runs `--repeats` rounds, round-robin, so machine load hits
all alike; the table gives medians and ratios to dense measured in this run.
Bytes per client come from the round computations' types (`wire`), FLOPs
and peak memory of one client's local training from `bench.client_cost`,
one subprocess per variant. Results: `bench/results/round_costs.{md,json}`.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TFF_PRUNE_TF_LOG_LEVEL", "3")

# pylint: disable=wrong-import-position
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from bench import client_cost as client_cost_bench
from bench import common
from tasks.asr import compaction
from tasks.asr import text
from tff_prune.federated import compact_rounds
from tff_prune.federated import process as process_lib
from tff_prune.model import local_step
from tff_prune.model import variable_model
from tff_prune.program import accounting
from tff_prune.pruning import config as config_lib
from tff_prune.pruning import schedule as schedule_lib
from tff_prune.runtime import owned as runtime

REPO = common.REPO
Variant = common.Variant

# (name, scheme, sparsity, client model, goal on bytes (down and up) vs dense)
PRUNED = (
    ("compact, column 50%", "structured", 0.5, "compact", 0.55),
    ("masked, column 50%", "structured", 0.5, "masked", None),
    ("compact, column 75%", "structured", 0.75, "compact", 0.30),
    ("masked, column 75%", "structured", 0.75, "masked", None),
    ("unstructured 50%", "unstructured", 0.5, "masked", 0.55),
    ("unstructured 80%", "unstructured", 0.8, "masked", 0.25),
    ("unstructured 90%", "unstructured", 0.9, "masked", 0.15),
)
QUICK = ("compact, column 50%",)
COMPUTE = ("compact, column 50%", "masked, column 50%", "compact, column 75%")
# The pruned variant whose round is also measured with empty client datasets.
FLOOR_OF = "compact, column 50%"
FLOOR = "floor: "  # name prefix of a variant whose clients have no data
# The client models whose local training is also timed without TFF.
CLIENT_STEPS = (("dense", 0.0), ("masked", 0.5), ("compact", 0.5), ("compact", 0.75))
STEPS = "client steps: "  # name prefix of those variants
GOALS = {  # issue 26's goals vs dense: round time, the client's own steps, step FLOPs
    "compact, column 50%": {"round": 0.75, "steps": 0.65, "flops": 0.6},
    "compact, column 75%": {"round": 0.5, "steps": 0.4, "flops": 0.35},
}


_optimizer = common.client_optimizer


def _pruning(scheme: str, sparsity: float) -> config_lib.PruningConfig:
    return config_lib.PruningConfig(scheme=scheme, structure="column", schedule=(
        schedule_lib.PruningSchedule(kind="constant", target_sparsity=sparsity, begin_round=1,
                                     end_round=1, every_rounds=1, refine_rounds=0)))


def _process_variant(name, built, rounds, sparsity, kind, data, empty=False):
    """A variant running `built` (in `rounds` when given) from its own state;
    `empty`: after round 1, every client gets an empty dataset instead of its
    data (round 1 trains, so that the masks, hence the compact architecture,
    are the variant's with data)."""
    state = {"s": built.process.initialize(), "empty": False}
    runner = rounds.next if rounds is not None else built.process.next

    def step(d):
        if state["empty"]:
            d = [dataset.take(0) for dataset in d]
        output = runner(state["s"], d)
        state["s"] = output.state
        # What the clients trained on (read from the round's own metrics).
        variant.examples = int(output.metrics["client_work"]["train"]["num_examples"])

    variant = Variant((FLOOR + name) if empty else name, step, sparsity=sparsity,
                      model_kind=kind)
    for _ in range(2):  # round 1 sets the masks; round 2 compiles the pruned round
        variant.run(data)
        state["empty"] = empty
    variant.client_work = (rounds.client_work_for(state["s"]) if rounds is not None
                           else built.client_work)
    return variant


def _fed_avg_variant(task, data):
    fed_avg = tff.learning.algorithms.build_weighted_fed_avg(
        lambda: variable_model.TaskVariableModel(task, task.build_model()),
        client_optimizer_fn=_optimizer(), server_optimizer_fn=tff.learning.optimizers
        .build_sgdm(1.0))
    state = {"s": fed_avg.initialize()}

    def step(d):
        state["s"] = fed_avg.next(state["s"], d).state
    variant = Variant("TFF build_weighted_fed_avg", step)
    variant.run(data)
    return variant


def _plain_loop_variant(task, data):
    """The same client steps without TFF: one tf.function per client update."""
    model = task.build_model()
    optimizer = _optimizer()
    weights = [v.numpy() for v in model.trainable_weights]

    @tf.function
    def client_update(initial, dataset):
        for v, w in zip(model.trainable_weights, initial):
            v.assign(w)
        variables = model.trainable_weights
        opt_state = optimizer.initialize(tuple(tf.TensorSpec(v.shape, v.dtype)
                                               for v in variables))
        num_examples = tf.constant(0, tf.int64)
        for batch in dataset:
            with tf.GradientTape() as tape:
                loss, n = task.batch_loss(model, batch, training=True)
            grads = tape.gradient(loss, variables)
            opt_state, updated = optimizer.next(opt_state, tuple(variables), tuple(grads))
            for v, u in zip(variables, updated):
                v.assign(u)
            num_examples += tf.cast(n, tf.int64)
        return [a - v for a, v in zip(initial, variables)], num_examples

    def step(d):
        total, weight_sum = None, 0.0
        for dataset in d:
            delta, n = client_update(weights, dataset)
            n = float(n)
            scaled = [np.asarray(x) * n for x in delta]
            total = scaled if total is None else [a + b for a, b in zip(total, scaled)]
            weight_sum += n
        for i, t in enumerate(total):
            weights[i] = weights[i] - t / weight_sum

    variant = Variant("plain TF loop (no TFF)", step)
    variant.run(data)
    return variant


def _steps_name(kind: str, sparsity: float) -> str:
    return STEPS + (kind if kind == "dense" else f"{kind}, column {sparsity:.0%}")


def _client_steps_variant(task, kind: str, sparsity: float, data) -> Variant:
    """Every client's local training of the `kind` client model, without TFF:
    one `tf.function` per client dataset, from the same start each time."""
    model, masks = client_cost_bench.client_model(task, kind, sparsity)
    trainable = model.trainable_weights
    start = [tf.constant(v.numpy()) for v in trainable]
    optimizer = _optimizer()
    specs = tuple(tf.TensorSpec(v.shape, v.dtype) for v in trainable)

    @tf.function
    def local_training(dataset):
        for variable, value in zip(trainable, start):
            variable.assign(value)
        state = optimizer.initialize(specs)
        num_examples = tf.constant(0, tf.int32)
        for batch in dataset:
            state, _, n, _ = local_step.masked_step(
                trainable, masks, optimizer, state,
                functools.partial(task.batch_loss, model, batch, training=True))
            num_examples += tf.cast(n, tf.int32)
        return num_examples

    def step(d):
        variant.examples = sum(int(local_training(dataset)) for dataset in d)

    variant = Variant(_steps_name(kind, sparsity), step, sparsity=sparsity, model_kind=kind)
    variant.run(data)  # traces
    return variant


def client_cost(model_size, kind, sparsity, num_train_speakers, cache_dir) -> dict:
    """`bench.client_cost` in its own process (peak RSS of that client alone)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.client_cost", f"--model_size={model_size}",
         f"--variant={kind}", f"--sparsity={sparsity}",
         f"--num_train_speakers={num_train_speakers}", f"--cache_dir={cache_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    task = common.load_task(args.model_size, args.num_train_speakers, args.cache_dir)
    data = common.cohort_data(task, args.clients, args.client_epochs)
    compactor = compaction.ConformerCompactor(task.model_config, text.VOCAB_SIZE)
    if args.orchestration_only:
        pruned = []
    elif args.quick or args.floor_only:
        pruned = [p for p in PRUNED if p[0] in QUICK]
    elif args.compute_only:
        pruned = [p for p in PRUNED if p[0] in COMPUTE]
    else:
        pruned = list(PRUNED)
    with runtime.local_runtime(log_dir=os.path.join(args.work_dir, "logs")):
        dense_built = process_lib.build_federated_pruning_process(
            task, config_lib.PruningConfig(scheme="none"), _optimizer(),
            tff.learning.optimizers.build_sgdm(1.0))
        variants = [_process_variant("dense (ours, --pruning=none)", dense_built, None,
                                     0.0, "dense", data)]
        floors = [_process_variant(variants[0].name, dense_built, None, 0.0, "dense", data,
                                   empty=True)]
        if not (args.quick or args.floor_only or args.compute_only):
            variants += [_fed_avg_variant(task, data), _plain_loop_variant(task, data)]
        for name, scheme, sparsity, client_model, _ in pruned:
            built = process_lib.build_federated_pruning_process(
                task, _pruning(scheme, sparsity), _optimizer(),
                tff.learning.optimizers.build_sgdm(1.0))
            rounds = compact_rounds.CompactRounds(
                built, compactor if client_model == "compact"
                else compact_rounds.FullSizeModel(task.build_model))
            variants.append(_process_variant(name, built, rounds, sparsity,
                                             client_model, data))
            if name == FLOOR_OF:
                floors.append(_process_variant(name, built, rounds, sparsity,
                                               client_model, data, empty=True))
        variants += floors
        if not (args.floor_only or args.orchestration_only or args.skip_client_steps):
            variants += [_client_steps_variant(task, kind, sparsity, data)
                         for kind, sparsity in CLIENT_STEPS]
        common.time_round_robin(variants, data, args.repeats)
    rows = []
    dense = variants[0]
    dense_down, dense_up = accounting.round_wire_bytes(dense.client_work)
    costs = {}
    steps_dense = next((v for v in variants if v.name == _steps_name("dense", 0.0)), None)
    for variant in variants:
        row = {"variant": variant.name,
               "round_seconds_median": float(np.median(variant.seconds)),
               "round_vs_dense": float(np.median(variant.seconds) / np.median(dense.seconds)),
               "examples_per_round": variant.examples}
        if variant.name.startswith(STEPS):
            row["steps_vs_dense"] = variant.median / steps_dense.median
        if variant.client_work is not None:
            down, up = accounting.round_wire_bytes(variant.client_work)
            row.update(bytes_down=down, bytes_up=up, down_vs_dense=down / dense_down,
                       up_vs_dense=up / dense_up)
        if (variant.client_work is not None and not args.skip_client_cost
                and not variant.name.startswith(FLOOR)):
            key = (variant.model_kind, variant.sparsity)
            if key not in costs:
                costs[key] = client_cost(args.model_size, variant.model_kind,
                                         variant.sparsity, args.num_train_speakers,
                                         args.cache_dir)
            row.update({k: costs[key][k] for k in
                        ("params", "step_flops", "peak_rss_mib", "training_rss_growth_mib")})
        rows.append(row)
    if "step_flops" in rows[0]:
        for row in rows:
            if "step_flops" in row:
                row["flops_vs_dense"] = row["step_flops"] / rows[0]["step_flops"]
                row["peak_rss_vs_dense"] = row["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    return common.header({
        "model_size": args.model_size, "clients": args.clients,
        "client_epochs": args.client_epochs, "repeats": args.repeats,
        "goals": {name: goal for name, _, _, _, goal in PRUNED if goal}, "rows": rows})


def _fmt(value, pattern):
    return "—" if value is None else format(value, pattern)


def markdown(result: dict) -> str:
    lines = [
        f"# Round costs: `{result['model_size']}` model, {result['clients']} clients × "
        f"{result['client_epochs']} local epoch(s), median of {result['repeats']} rounds",
        "",
        f"Measured {result['date']} on {result['cpus']} CPU cores ({result['machine']}) by "
        "`python -m bench.round_costs`; every figure vs dense is a ratio measured in the same "
        "run. Bytes: per client, from the round computations' TFF types. FLOPs: one local "
        "training step on a real batch (TF's per-op FLOPs statistics). Peak RSS: one "
        "client's local training alone in its own process (`bench.client_cost`; TF itself "
        "is most of it).",
        "",
        "| variant | client examples | round s | round vs dense | bytes down | bytes up "
        "| down vs dense | up vs dense | params | step GFLOPs | FLOPs vs dense | peak RSS MiB "
        "| RSS vs dense |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if r["variant"].startswith(STEPS):
            continue
        lines.append(
            f"| {r['variant']} | {_fmt(r.get('examples_per_round'), ',')} "
            f"| {r['round_seconds_median']:.2f} | {r['round_vs_dense']:.2f}× "
            f"| {_fmt(r.get('bytes_down'), ',')} | {_fmt(r.get('bytes_up'), ',')} "
            f"| {_fmt(r.get('down_vs_dense'), '.3f')} | {_fmt(r.get('up_vs_dense'), '.3f')} "
            f"| {_fmt(r.get('params'), ',')} "
            f"| {_fmt(r['step_flops'] / 1e9 if 'step_flops' in r else None, '.2f')} "
            f"| {_fmt(r.get('flops_vs_dense'), '.2f')} | {_fmt(r.get('peak_rss_mib'), '.0f')} "
            f"| {_fmt(r.get('peak_rss_vs_dense'), '.2f')} |")
    by_name = {r["variant"]: r for r in result["rows"]}
    floors = [(by_name[r["variant"][len(FLOOR):]], r) for r in result["rows"]
              if r["variant"].startswith(FLOOR)]
    if floors:
        lines += ["", "## Orchestration floor", "",
                  "The same round computations with every client's dataset empty: what a "
                  "round costs besides the clients' arithmetic.", ""]
        for full, floor in floors:
            share = floor["round_seconds_median"] / full["round_seconds_median"]
            lines.append(f"* {full['variant']}: {floor['round_seconds_median']:.2f} s of "
                         f"{full['round_seconds_median']:.2f} s ({share:.0%}) is the floor; "
                         f"the clients' training is the other "
                         f"{full['round_seconds_median'] - floor['round_seconds_median']:.2f} s")
    steps = [r for r in result["rows"] if r["variant"].startswith(STEPS)]
    if steps:
        lines += ["", "## The clients' own steps, without TFF", "",
                  "The same clients' local training (same batches, optimizer and example "
                  "counts) as one `tf.function` per client, no TFF; the masks of the pruned "
                  "client models from one magnitude decision at the same sparsity "
                  "(`bench.client_cost.client_model`). Timed round-robin with the rounds "
                  "above.", "",
                  "| client model | examples | s per round's training | vs dense |",
                  "|---|---:|---:|---:|"]
        for r in steps:
            lines.append(f"| {r['variant'][len(STEPS):]} | {_fmt(r.get('examples_per_round'), ',')} "
                         f"| {r['round_seconds_median']:.2f} | {r['steps_vs_dense']:.2f}× |")
    steps_by_name = {r["variant"][len(STEPS):]: r for r in steps}
    lines += ["", "## Goals (bytes: issue 9; time and FLOPs: issue 26)", ""]
    for name, goal in result["goals"].items():
        if name in by_name:
            r = by_name[name]
            worst = max(r["down_vs_dense"], r["up_vs_dense"])
            lines.append(f"* {name}: bytes ≤ {goal}× dense: {worst:.3f}× — "
                         f"{'met' if worst <= goal else 'missed'}")
    for name, goals in GOALS.items():
        if name in by_name:
            r = by_name[name]
            if "round" in goals:
                lines.append(f"* {name}: round time ≤ {goals['round']}× dense: "
                             f"{r['round_vs_dense']:.2f}× — "
                             f"{'met' if r['round_vs_dense'] <= goals['round'] else 'missed'}")
            if "steps" in goals and name in steps_by_name:
                ratio = steps_by_name[name]["steps_vs_dense"]
                lines.append(f"* {name}: the client's own steps ≤ {goals['steps']}× dense: "
                             f"{ratio:.2f}× — {'met' if ratio <= goals['steps'] else 'missed'}")
            if "flops" in goals and "flops_vs_dense" in r:
                lines.append(f"* {name}: FLOPs ≤ {goals['flops']}× dense: "
                             f"{r['flops_vs_dense']:.2f}× — "
                             f"{'met' if r['flops_vs_dense'] <= goals['flops'] else 'missed'}")
    if "TFF build_weighted_fed_avg" in by_name:
        ours = by_name["dense (ours, --pruning=none)"]["round_seconds_median"]
        for name, goal in (("TFF build_weighted_fed_avg", 1.10), ("plain TF loop (no TFF)", 1.3)):
            ratio = ours / by_name[name]["round_seconds_median"]
            lines.append(f"* ours (`--pruning=none`) ≤ {goal}× {name}: {ratio:.2f}× — "
                         f"{'met' if ratio <= goal else 'missed'}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = common.argument_parser(__doc__, "round_costs", repeats=5)
    parser.add_argument("--quick", action="store_true",
                        help="one pruned variant, no baselines (a smoke run)")
    parser.add_argument("--skip_client_cost", action="store_true")
    parser.add_argument("--skip_client_steps", action="store_true",
                        help="no TFF-free timing of the clients' local training")
    parser.add_argument("--compute_only", action="store_true",
                        help="dense, masked 50%%, compact 50%% and compact 75%% rounds, their "
                             "clients' steps without TFF, and the floors")
    parser.add_argument("--orchestration_only", action="store_true",
                        help="dense, TFF FedAvg and the plain loop only (and the dense floor)")
    parser.add_argument("--floor_only", action="store_true",
                        help="dense and compact 50%%, each next to its round with empty "
                             "client datasets")
    args = parser.parse_args(argv)
    result = run(args)
    common.write_results(result, markdown(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
