"""Export sizes and CPU latency: dense vs structured-50% compact vs unstructured-80%.

  python -m bench.export_sizes [--model_size=small] [--out=bench/results/export_sizes.md]

Builds the Conformer preset, prunes it with the server's own mask code
(`tff_prune.export.masking`: magnitude, uniform, one decision at the target)
- no training, which changes neither sizes nor latency - exports each variant
through `tff_prune.export.export_model` (the structured one compacted), and
measures: parameters (non-zero ones too), SavedModel bytes (saved_model.pb +
variables/), gzip'd SavedModel bytes, TFLite bytes (plus TFLite's sparse
encoding for unstructured), and the median CPU latency on batch 1 x 5 s of audio of the whole request
(``serving_default``) and of the model alone (``features``), timed
round-robin so machine load hits all variants alike.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile

os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TFF_PRUNE_TF_LOG_LEVEL", "3")

# pylint: disable=wrong-import-position
import numpy as np
import tensorflow as tf

from tasks.asr import features as features_lib
from tasks.asr import model as model_lib
from tasks.asr import serving
from tasks.asr import text
from tasks.asr import units
from tasks.asr.export import AsrExport
from tff_prune.export import masking
from tff_prune.export import measure
from tff_prune.export import pipeline
import tff_prune.runtime.owned  # noqa: F401  (TFF's default context must never start a worker)

VARIANTS = (
    # name, scheme, sparsity, compact
    ("dense", "none", 0.0, False),
    ("structured 50% (column), compacted", "structured", 0.5, True),
    ("unstructured 80%", "unstructured", 0.8, False),
)


def _nonzero(model: tf.keras.Model) -> int:
    return int(sum(np.count_nonzero(w.numpy()) for w in model.trainable_weights))


def run(model_size: str, repeats: int, seed: int) -> list[dict]:
    """Exports and measures every variant; returns one row per variant."""
    config = getattr(model_lib.ConformerConfig, model_size)(dropout=0.0)
    rows = []
    with tempfile.TemporaryDirectory() as base:
        for name, scheme, sparsity, compact in VARIANTS:
            tf.keras.utils.set_random_seed(seed)
            model = model_lib.build_conformer_ctc(config, text.VOCAB_SIZE)
            # Trained models have non-zero biases and norms: so do these.
            masking.randomize_non_kernel_weights(model, seed=seed)
            if scheme != "none":
                masking.apply_magnitude_masks(model, scheme, sparsity, "column",
                                              units.ConformerStructure(config.num_heads),
                                              model_lib.EXCLUDED_FROM_PRUNING)
            result = pipeline.export_model(
                model, AsrExport(config, features_lib.FeatureConfig()), base, f"m{len(rows)}",
                compact=compact, tflite=True, tflite_sparsity=scheme == "unstructured")
            rows.append({
                "variant": name, "params": result.params,
                "nonzero_params": _nonzero(model) if not compact else result.params,
                "saved_model_bytes": result.saved_model_bytes,
                "gzip_bytes": measure.gzip_bytes(result.path),
                "tflite_bytes": result.tflite_bytes,
                "tflite_sparse_bytes": result.tflite_sparse_bytes,
                "max_logit_difference": result.max_logit_difference,
                "path": result.path})
            print(f"exported {name}: {result.params} params", file=sys.stderr)
        paths = [r["path"] for r in rows]
        latencies = measure.serving_latencies(
            paths, serving.latency_request(serving.SERVING_SIGNATURE),
            serving.SERVING_SIGNATURE, repeats=repeats)
        model_latencies = measure.serving_latencies(
            paths, serving.latency_request(serving.FEATURES_SIGNATURE),
            serving.FEATURES_SIGNATURE, repeats=repeats)
    for row, latency, model_latency in zip(rows, latencies, model_latencies):
        row["latency_ms"] = latency * 1000
        row["latency_ratio"] = latency / latencies[0]
        row["model_latency_ms"] = model_latency * 1000
        row["model_latency_ratio"] = model_latency / model_latencies[0]
        del row["path"]
    return rows


def markdown(rows: list[dict], model_size: str, repeats: int) -> str:
    """The results table with what it was measured on."""
    def kb(n):
        return f"{n / 1024:,.0f} KiB"

    lines = [
        f"Conformer-CTC `{model_size}` preset, random init pruned by magnitude with the "
        "server's mask code (no training); TensorFlow "
        f"{tf.__version__}, {os.cpu_count()} CPU cores ({platform.machine()}), "
        f"{datetime.date.today().isoformat()}. CPU latency, batch 1 x 5 s of audio, median "
        f"of {repeats} runs, models timed round-robin: *request* = `serving_default` "
        "(log-mel front end + model + greedy CTC on raw audio), *model* = the `features` "
        "signature on the 500 precomputed frames. Produced by `python -m bench.export_sizes`.",
        "",
        "| model | params (non-zero) | SavedModel | gzip | TFLite | request latency "
        "| vs dense | model latency | vs dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tflite = kb(r["tflite_bytes"])
        if r["tflite_sparse_bytes"]:
            tflite += f" ({kb(r['tflite_sparse_bytes'])} sparse)"
        lines.append(
            f"| {r['variant']} | {r['params']:,} ({r['nonzero_params']:,}) | "
            f"{kb(r['saved_model_bytes'])} | {kb(r['gzip_bytes'])} | {tflite} | "
            f"{r['latency_ms']:.1f} ms | {r['latency_ratio']:.2f}x | "
            f"{r['model_latency_ms']:.1f} ms | {r['model_latency_ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Runs the benchmark and writes the table (and raw numbers as JSON)."""
    parser = argparse.ArgumentParser(prog="python -m bench.export_sizes")
    parser.add_argument("--model_size", default="small", choices=("tiny", "small", "medium", "paper"))
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "export_sizes.md"))
    args = parser.parse_args(argv)
    rows = run(args.model_size, args.repeats, args.seed)
    table = markdown(rows, args.model_size, args.repeats)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(table)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"model_size": args.model_size, "repeats": args.repeats, "rows": rows}, f, indent=2)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
