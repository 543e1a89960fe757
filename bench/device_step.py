"""What one on-device training step costs a phone: the TFLite ``train`` signature, dense vs compact.

  python -m bench.device_step --model_size=medium --sparsities=0.5,0.75

Each variant is exported as a run's export would be (`tff_prune.export`: the
dense model, and the compact model at each structured column sparsity, masks
from one magnitude decision on a random init with random biases and norms),
with its on-device training artifact (``assets.extra/train.tflite``: one
masked step of Adam 3e-3, the default run's client optimizer). Then:

* latency: every artifact's ``train`` signature in `tf.lite.Interpreter`
  (``--threads`` threads), batch 1 x ``--seconds`` of audio (random features
  and a feasible random transcript of 12 characters per second), timed
  round-robin after two warm-up steps each, median of ``--repeats``;
* memory: each artifact in a fresh process of its own: peak resident memory
  (VmHWM) over loading the interpreter and running three steps, above the
  process's resident memory just before (Python and TensorFlow imported,
  the peak reset), and the process's whole peak.

The ratios compare variants measured in the same run. A phone's own numbers
differ (its cores, TFLite's build); what the bench shows is how the
artifact's cost follows the model's size on the same interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TFF_PRUNE_TF_LOG_LEVEL", "3")

# pylint: disable=wrong-import-position
import numpy as np
import tensorflow as tf

from bench import common

_WARMUP_STEPS = 2
_MEMORY_STEPS = 3


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory(artifact: str, batch_file: str, threads: int) -> dict:
    """Peak memory of loading `artifact` and running `_MEMORY_STEPS` train steps
    in this process (TensorFlow already imported), in MiB."""
    batch = dict(np.load(batch_file))
    with open(artifact, "rb") as f:
        content = f.read()
    # Reset VmHWM to the current RSS: the peak below is this work's.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    interpreter = tf.lite.Interpreter(model_content=content, num_threads=threads)
    train = interpreter.get_signature_runner("train")
    for _ in range(_MEMORY_STEPS):
        loss = float(train(**batch)["loss"])
    peak = _status_kib("VmHWM")
    return {"peak_above_baseline_mib": (peak - before) / 1024, "process_peak_mib": peak / 1024,
            "baseline_mib": before / 1024, "loss": loss}


def _export(args, work: str) -> list[dict]:
    from tasks.asr import model as model_lib  # pylint: disable=import-outside-toplevel
    from tasks.asr import text  # pylint: disable=import-outside-toplevel
    from tasks.asr import units  # pylint: disable=import-outside-toplevel
    from tasks.asr.export import AsrExport  # pylint: disable=import-outside-toplevel
    from tff_prune.export import masking  # pylint: disable=import-outside-toplevel
    from tff_prune.export import on_device  # pylint: disable=import-outside-toplevel
    from tff_prune.export import pipeline  # pylint: disable=import-outside-toplevel

    config = getattr(model_lib.ConformerConfig, args.model_size)()
    export = AsrExport(config)
    rows = []
    for sparsity in [0.0, *args.sparsities]:
        tf.keras.utils.set_random_seed(args.seed)
        model = model_lib.build_conformer_ctc(config, text.VOCAB_SIZE)
        masking.randomize_non_kernel_weights(model, seed=args.seed)
        if sparsity:
            masking.apply_magnitude_masks(model, "structured", sparsity, "column",
                                          units.ConformerStructure(config.num_heads),
                                          model_lib.EXCLUDED_FROM_PRUNING)
        start = time.perf_counter()
        result = pipeline.export_model(
            model, export, work, f"s{int(sparsity * 100)}", compact=sparsity > 0,
            tflite=False, on_device_optimizer=common.client_optimizer(),
            mask_biases=sparsity > 0)
        name = "dense" if not sparsity else f"compact, column {sparsity:.0%}"
        rows.append({"variant": name, "sparsity": sparsity, "params": result.params,
                     "train_tflite_bytes": result.train_tflite_bytes,
                     "export_s": time.perf_counter() - start,
                     "artifact": os.path.join(result.path, on_device.TRAIN_TFLITE_FILE)})
        print(f"exported {name}: {result.params:,} params, "
              f"{result.train_tflite_bytes:,} bytes", file=sys.stderr)
    np.savez(os.path.join(work, "batch.npz"), **export.example_training_batch(args.seconds))
    return rows


def _time_steps(rows: list[dict], batch: dict, args) -> None:
    runners = []
    for row in rows:
        with open(row["artifact"], "rb") as f:
            interpreter = tf.lite.Interpreter(model_content=f.read(), num_threads=args.threads)
        runners.append((interpreter, interpreter.get_signature_runner("train")))
        for _ in range(_WARMUP_STEPS):
            runners[-1][1](**batch)
    seconds: list[list[float]] = [[] for _ in rows]
    for _ in range(args.repeats):
        for i, (_, train) in enumerate(runners):
            start = time.perf_counter()
            train(**batch)
            seconds[i].append(time.perf_counter() - start)
    for row, times in zip(rows, seconds):
        row["step_ms"] = 1000 * float(np.median(times))
        row["step_ms_all"] = [1000 * t for t in times]


def _memory(row: dict, batch_file: str, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.device_step", f"--measure_memory={row['artifact']}",
         f"--batch_file={batch_file}", f"--threads={threads}"],
        cwd=common.REPO, capture_output=True, text=True, timeout=1800, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory of {row['variant']} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(result: dict) -> str:
    """The results table with what it was measured on."""
    rows = result["rows"]
    dense = rows[0]
    lines = [
        f"# On-device training step: `{result['model_size']}` model, TFLite `train` "
        f"signature, batch 1 x {result['seconds']:g} s",
        "",
        f"Measured {result['date']} on {result['cpus']} CPU cores ({result['machine']}), "
        f"TensorFlow {result['tensorflow']} `tf.lite.Interpreter` with {result['threads']} "
        f"thread(s), by `python -m bench.device_step --model_size={result['model_size']}`. "
        f"Step: median of {result['repeats']} steps, variants round-robin after "
        f"{_WARMUP_STEPS} warm-up steps each. Peak memory: VmHWM of a fresh process loading "
        f"the artifact and running {_MEMORY_STEPS} steps, above its resident memory just "
        "before (Python and TensorFlow imported); the process's whole peak beside it. "
        "Models: random init with random biases and norms, masks from one magnitude "
        "decision (no training); the artifact trains with Adam 3e-3.",
        "",
        "| variant | params | train.tflite | step ms | vs dense | peak MiB above baseline "
        "| vs dense | process peak MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['params']:,} | {r['train_tflite_bytes'] / 2**20:.1f} MiB "
            f"| {r['step_ms']:.0f} | {r['step_ms'] / dense['step_ms']:.2f}× "
            f"| {r['peak_above_baseline_mib']:.0f} "
            f"| {r['peak_above_baseline_mib'] / dense['peak_above_baseline_mib']:.2f}× "
            f"| {r['process_peak_mib']:.0f} |")
    goals = result.get("goals", [])
    if goals:
        lines += ["", "## Goals (issue 26)", ""]
        for g in goals:
            lines.append(f"* {g['what']}: ≤ {g['goal']:.2f}× dense: {g['value']:.2f}× — "
                         f"{'met' if g['met'] else 'missed'}")
    return "\n".join(lines) + "\n"


_GOALS = {0.5: (0.6, 0.7), 0.75: (0.4, 0.5)}  # sparsity: (step, peak memory) vs dense


def _goals(rows: list[dict]) -> list[dict]:
    dense, out = rows[0], []
    for r in rows[1:]:
        if r["sparsity"] not in _GOALS:
            continue
        step_goal, memory_goal = _GOALS[r["sparsity"]]
        for what, value, goal in (
                ("step latency", r["step_ms"] / dense["step_ms"], step_goal),
                ("peak memory", r["peak_above_baseline_mib"] / dense["peak_above_baseline_mib"],
                 memory_goal)):
            out.append({"what": f"{r['variant']}: {what}", "value": value, "goal": goal,
                        "met": value <= goal})
    return out


def main(argv=None) -> int:
    """Exports the variants, times their steps, measures their memory, writes the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_size", default="medium")
    parser.add_argument("--sparsities", default="0.5,0.75",
                        type=lambda s: [float(x) for x in s.split(",") if x])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(common.RESULTS, "device_step"),
                        help="path without extension: writes .md and .json")
    parser.add_argument("--measure_memory", help=argparse.SUPPRESS)
    parser.add_argument("--batch_file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_memory:
        print(json.dumps(measure_memory(args.measure_memory, args.batch_file, args.threads)))
        return 0
    with tempfile.TemporaryDirectory(prefix="device_step_") as work:
        rows = _export(args, work)
        batch_file = os.path.join(work, "batch.npz")
        _time_steps(rows, dict(np.load(batch_file)), args)
        for row in rows:
            row.update(_memory(row, batch_file, args.threads))
            del row["artifact"]
    result = common.header({"model_size": args.model_size, "seconds": args.seconds,
                            "repeats": args.repeats, "threads": args.threads,
                            "tensorflow": tf.__version__, "rows": rows})
    result["goals"] = _goals(rows)
    common.write_results(result, markdown(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
