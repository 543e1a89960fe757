"""``python -m tff_prune.export --checkpoint=RUN --export_dir=BASE``: export a saved run.

Writes ``BASE/MODEL_NAME/VERSION/`` (the next free version) and prints what it
wrote; see ``docs/serving.md`` for serving it.
"""

from __future__ import annotations

import json
import os
import sys

# Quiet TF's C++ logs as run_experiment.py does (set before TensorFlow is
# imported; not setdefault, see there). TFF_PRUNE_TF_LOG_LEVEL=0 shows all.
os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TFF_PRUNE_TF_LOG_LEVEL", "3")

# Before absl's app.run: TensorFlow 2.14 imported first inside app.run's main
# builds Keras functional models from graph tensors ("'SymbolicTensor' object
# has no attribute 'node'" when the saved model is rebuilt). run_experiment.py
# imports it with its flag definitions, before app.run, too.
import tensorflow  # noqa: E402,F401 pylint: disable=wrong-import-position,unused-import
from absl import app  # pylint: disable=wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "experiment directory, its final_model/ or a weights prefix")
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "TF Serving base path: versions go to EXPORT_DIR/MODEL_NAME/N")
_MODEL_NAME = flags.DEFINE_string(
    "model_name", None, "TF Serving model name (default: the run's task's, e.g. asr)")
_COMPACT = flags.DEFINE_enum(
    "compact", "auto", ["auto", "yes", "no"],
    "physically remove pruned units first (auto: for --pruning=structured runs)")
_TFLITE = flags.DEFINE_bool("tflite", True, "also write assets.extra/model.tflite")
_TRAIN_TFLITE = flags.DEFINE_bool(
    "train_tflite", True, "also write assets.extra/train.tflite, the on-device training "
    "artifact (one local step with the run's client optimizer; docs/serving.md)")
_LATENCY = flags.DEFINE_bool(
    "latency", False, "measure CPU latency of the task's example request (ASR: batch 1, "
    "5 s of audio), median of 20")


def main(argv: list[str]) -> int:
    """Runs one export; returns the exit status."""
    del argv
    if not _CHECKPOINT.value or not _EXPORT_DIR.value:
        print("error: --checkpoint and --export_dir are required", file=sys.stderr)
        return 2
    from tff_prune.export import checkpoint  # pylint: disable=import-outside-toplevel
    from tff_prune.export import measure  # pylint: disable=import-outside-toplevel
    from tff_prune.export import pipeline  # pylint: disable=import-outside-toplevel
    from tff_prune.federated import optimizers  # pylint: disable=import-outside-toplevel
    from tff_prune.program import registry  # pylint: disable=import-outside-toplevel

    try:
        run = checkpoint.load_saved_run(_CHECKPOINT.value, registry.task_export)
        result = pipeline.export_saved_run(
            run, _EXPORT_DIR.value, _MODEL_NAME.value, _COMPACT.value, _TFLITE.value,
            optimizers.client_optimizer_of if _TRAIN_TFLITE.value else None)
    except (FileNotFoundError, ValueError, AssertionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = result.describe()
    request = run.task_export.example_request() if _LATENCY.value else None
    if request is not None:
        signature, inputs = request
        summary["cpu_latency_s"] = measure.serving_latencies(
            [result.path], inputs, signature)[0]
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(f"exported version {result.version} to {result.path}")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
