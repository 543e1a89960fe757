"""Where a client's training step spends its time: per layer, dense vs compact.

  python -m bench.step_profile --model_size=medium --sparsities=0.5,0.75

The models are `bench.client_cost`'s (dense; masked and compact at each
structured column sparsity, masks from one magnitude decision) on a real
batch of one client (batch 8 of the built-in corpus). Each variant's step
(forward, backward, masked Adam update, in one `tf.function`) is timed
round-robin with the others (`--repeats`, after two warm-up steps); then
TensorFlow's profiler records `--profile_steps` steps of each variant and the
ops' self time is summed per layer (gradient ops count with their layer).
Self times are summed over both cores' threads, so a variant's total can
exceed its step time; compare layers within a column and variants by their
shares. FLOPs: `tff_prune.model.client_cost.training_step_flops`.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import struct
import sys
import tempfile

os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TFF_PRUNE_TF_LOG_LEVEL", "3")

# pylint: disable=wrong-import-position
import tensorflow as tf
from tensorflow.python.profiler.internal import _pywrap_profiler

from bench import client_cost as client_cost_bench
from bench import common
from tff_prune.model import client_cost
from tff_prune.model import wrappers

_BLOCK = re.compile(r"block\d+_")


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(data: bytes) -> list[tuple[int, object]]:
    """The (field number, value) pairs of one serialized protobuf message."""
    out, i = [], 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = struct.unpack("<d", data[i:i + 8])[0], i + 8
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i:i + size], i + size
        elif wire == 5:
            value, i = struct.unpack("<f", data[i:i + 4])[0], i + 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
        out.append((number, value))
    return out


def op_self_times(xplane_paths: list[str]) -> list[tuple[str, str, float]]:
    """(op type, op name, self time in µs) of every op the profiler saw.

    Reads the profiler's `tensorflow_stats` tool output (a `TfStatsDatabase`:
    its first table, records with op_type = 3, op_name = 4,
    total_self_time_in_us = 8; tensorflow/core/profiler/protobuf/tf_stats.proto),
    whose Python bindings TensorFlow does not ship.
    """
    data, ok = _pywrap_profiler.xspace_to_tools_data(xplane_paths, "tensorflow_stats", {})
    if not ok:
        raise RuntimeError("the profiler produced no tensorflow_stats")
    table = _fields(data if isinstance(data, bytes) else data.encode("latin-1"))[0][1]
    records = []
    for number, value in _fields(table):
        if number == 1 and isinstance(value, bytes):
            record = dict(_fields(value))
            records.append((record[3].decode(), record[4].decode(), float(record[8])))
    return records


def layer_of(op_name: str) -> str:
    """The model layer an op belongs to (blocks merged: `blockN_ff1_in`),
    else the op's top-level scope (e.g. the loss, the optimizer)."""
    parts = op_name.replace("gradient_tape/", "").split("/")
    if parts[0] in ("conformer_ctc", "model") and len(parts) > 1:
        name = parts[1]
    else:
        name = parts[0]
    name = name.removeprefix("prune_low_magnitude_")
    name = re.sub(r"_\d+$", "", name)  # add_1, Sigmoid_12: one row per kind
    return _BLOCK.sub("blockN_", name)


def _step_fn(task, model, masks):
    optimizer = tf.keras.optimizers.Adam(3e-3)

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            loss, _ = task.batch_loss(model, batch, training=True)
        grads = wrappers.apply_weight_masks(tape.gradient(loss, model.trainable_weights), masks)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
        return loss

    return step


def profile(step, batch, steps: int) -> dict[str, float]:
    """Self time per layer (ms per step) over `steps` profiled steps."""
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            step(batch).numpy()
        tf.profiler.experimental.stop()
        records = op_self_times(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"),
                                          recursive=True))
    per_layer: collections.Counter = collections.Counter()
    for op_type, name, self_us in records:
        if op_type != "IDLE":
            per_layer[layer_of(name)] += self_us / steps / 1000
    return dict(per_layer)


def run(args) -> dict:
    task = common.load_task(args.model_size, args.num_train_speakers, args.cache_dir)
    tf.keras.utils.set_random_seed(0)
    batch = next(iter(task.client_dataset(task.train_client_ids[0], training=True)))
    variants = [("dense", 0.0)] + [(kind, s) for s in args.sparsities
                                   for kind in ("masked", "compact")]
    timed, rows = [], []
    for kind, sparsity in variants:
        model, masks = client_cost_bench.client_model(task, kind, sparsity)
        step = _step_fn(task, model, masks)
        step(batch)
        step(batch)
        name = kind if kind == "dense" else f"{kind} {sparsity:.0%}"
        timed.append(common.Variant(name, lambda b, step=step: step(b).numpy()))
        rows.append({"variant": name, "sparsity": sparsity, "model_kind": kind,
                     "params": int(sum(int(tf.size(v)) for v in model.trainable_weights)),
                     "step_flops": client_cost.training_step_flops(task, model, batch),
                     "ms_per_layer": profile(step, batch, args.profile_steps)})
    common.time_round_robin(timed, batch, args.repeats)
    dense = rows[0]
    for row, variant in zip(rows, timed):
        row["step_s"] = variant.median
        row["step_vs_dense"] = variant.median / timed[0].median
        row["flops_vs_dense"] = row["step_flops"] / dense["step_flops"]
    shape = {k: list(v.shape) for k, v in batch[0].items()}
    return common.header({"model_size": args.model_size, "batch": shape,
                          "repeats": args.repeats, "profile_steps": args.profile_steps,
                          "rows": rows})


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [f"# Client step profile: `{result['model_size']}` model, one batch "
             f"(features {result['batch']['features']})", "",
             f"Measured {result['date']} on {result['cpus']} CPU cores ({result['machine']}) by "
             f"`python -m bench.step_profile`. Step: forward, backward and masked Adam update "
             f"in one `tf.function`, median of {result['repeats']} round-robin repeats. Per "
             f"layer: TensorFlow profiler self time of its forward and gradient ops, ms per "
             f"step ({result['profile_steps']} profiled steps), summed over threads "
             f"(blocks merged).", "",
             "| variant | params | step ms | step vs dense | FLOPs vs dense |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['params']:,} | {r['step_s'] * 1000:.0f} | "
                     f"{r['step_vs_dense']:.2f}× | {r['flops_vs_dense']:.2f}× |")
    layers = sorted(rows[0]["ms_per_layer"], key=rows[0]["ms_per_layer"].get, reverse=True)
    extra = sorted({k for r in rows for k in r["ms_per_layer"]} - set(layers))
    lines += ["", "| layer (ms/step) | " + " | ".join(r["variant"] for r in rows) + " |",
              "|---|" + "---:|" * len(rows)]
    for layer in layers + extra:
        cells = [r["ms_per_layer"].get(layer, 0.0) for r in rows]
        if max(cells) >= 1.0:
            lines.append(f"| {layer} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    totals = [sum(r["ms_per_layer"].values()) for r in rows]
    lines.append("| **all ops** | " + " | ".join(f"**{t:.0f}**" for t in totals) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = common.argument_parser(__doc__, "step_profile", model_size="medium", repeats=5)
    parser.add_argument("--sparsities", type=lambda s: [float(x) for x in s.split(",")],
                        default=[0.5, 0.75])
    parser.add_argument("--profile_steps", type=int, default=3)
    args = parser.parse_args(argv)
    result = run(args)
    common.write_results(result, markdown(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
