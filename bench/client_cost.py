"""What one client pays to train: FLOPs of a local step and peak memory.

  python -m bench.client_cost --model_size=small --variant=compact --sparsity=0.5

Measures the model a client actually trains:

* ``dense``: the plain Conformer (dense FedAvg's client);
* ``masked``: the same model inside the pruning wrappers, masks applied
  (what a masked-mode client trains: full-size tensors, zeros multiplied in);
* ``compact``: the physically smaller model a compact round sends, built from
  the same masks by the export's compaction.

Masks come from one magnitude decision at ``--sparsity`` (column structure,
uniform), as in `bench.export_sizes`; training values do not change sizes.
FLOPs: `tff_prune.model.client_cost.training_step_flops` (TensorFlow's FLOPs
statistics on the graph of one training step) on a real batch of one client. Peak memory: this
process's peak RSS (``VmHWM``) after ``--steps`` local Adam steps, and
its growth over the RSS before the first step (model built, data ready), so
that it runs alone in its own process (`bench.round_costs` starts one per
variant). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TFF_PRUNE_TF_LOG_LEVEL", "3")

# pylint: disable=wrong-import-position
import tensorflow as tf

import tff_prune.runtime.owned  # (also: TFF's default context must never start a worker)
from bench import common
from tasks.asr import compaction
from tasks.asr import data as data_lib
from tasks.asr import task as task_lib
from tff_prune.export import masking
from tff_prune.model import client_cost
from tff_prune.model import wrappers

VARIANTS = ("dense", "masked", "compact")


def _rss_mib() -> float:
    """Peak RSS of this process so far. `/proc`'s VmHWM, not `ru_maxrss`,
    which keeps the peak of the forking parent across exec."""
    return tff_prune.runtime.owned.process_peak_rss_bytes(os.getpid()) / 2**20


def client_model(task: task_lib.AsrTask, variant: str, sparsity: float
                 ) -> tuple[tf.keras.Model, list]:
    """(model to train, per-trainable-weight masks or None) of `variant`."""
    model = task.build_model()
    if variant == "dense":
        return model, [None] * len(model.trainable_weights)
    kernel_masks = masking.apply_magnitude_masks(
        model, "structured", sparsity, "column", task.model_structure, task.excluded_layers)
    if variant == "compact":
        compact, _ = compaction.compact_model(model, task.model_config)
        # As a compact round's client: masks only on kernels with zeros left
        # (pruned weights compaction could not cut out).
        return compact, [tf.cast(tf.not_equal(v, 0), tf.float32)
                         if "kernel" in v.name and not bool(tf.reduce_all(tf.not_equal(v, 0)))
                         else None for v in compact.trainable_weights]
    wrapped = wrappers.wrap_for_pruning(
        model, wrappers.select_prunable_layers(model, task.excluded_layers))
    index = wrappers.index_prunable_weights(wrapped)
    by_key = {wrappers.weight_key(v): v for v in model.weights}
    for variable in wrapped.trainable_weights:
        variable.assign(by_key[wrappers.weight_key(variable)])
    for key, mask_pos in zip(index.keys, index.mask_index):
        wrapped.non_trainable_weights[mask_pos].assign(kernel_masks[key])
    masks = wrappers.weight_masks([v.read_value() for v in wrapped.non_trainable_weights],
                                  index, len(wrapped.trainable_weights), True)
    return wrapped, masks


def measure(model_size: str, variant: str, sparsity: float, steps: int,
            num_train_speakers: int, cache_dir: str) -> dict:
    task = common.load_task(model_size, num_train_speakers, cache_dir)
    tf.keras.utils.set_random_seed(0)  # the same initial weights, hence masks, every run
    batches = list(task.client_dataset(task.train_client_ids[0], training=True).repeat()
                   .take(steps))
    model, masks = client_model(task, variant, sparsity)
    flops = client_cost.training_step_flops(task, model, batches[0])
    optimizer = tf.keras.optimizers.Adam(3e-3)

    @tf.function
    def train_step(batch):
        with tf.GradientTape() as tape:
            loss, _ = task.batch_loss(model, batch, training=True)
        grads = wrappers.apply_weight_masks(tape.gradient(loss, model.trainable_weights), masks)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
        return loss

    before = _rss_mib()
    for batch in batches:
        train_step(batch)
    return {"variant": variant, "sparsity": sparsity if variant != "dense" else 0.0,
            "model_size": model_size, "params": int(sum(
                int(tf.size(v)) for v in model.trainable_weights)),
            "step_flops": flops, "steps": steps, "rss_before_mib": round(before, 1),
            "peak_rss_mib": round(_rss_mib(), 1),
            "training_rss_growth_mib": round(_rss_mib() - before, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_size", default="small")
    parser.add_argument("--variant", choices=VARIANTS, default="dense")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--num_train_speakers", type=int, default=200)
    parser.add_argument("--cache_dir", default=data_lib.DEFAULT_CACHE_DIR)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.model_size, args.variant, args.sparsity, args.steps,
                             args.num_train_speakers, args.cache_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
