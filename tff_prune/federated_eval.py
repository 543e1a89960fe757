"""Federated evaluation on held-out clients with the current masks.

Each client decodes its own utterances with the masked global model and
returns sums (loss, examples, word and character edit distances and reference
lengths); the server adds them up, so WER/CER are exact corpus-level rates.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tasks import base
from tasks.asr import metrics
from tff_prune import wrappers


def build_federated_evaluation(
    task: base.FederatedTask,
    model_fn: Callable[[], tf.keras.Model],
    index: wrappers.PrunableWeightIndex,
    mask_biases: bool,
) -> tff.Computation:
    """(server ModelWeights, client datasets) -> summed metrics at the server."""
    weights_type = wrappers.model_weights_type(model_fn())
    data_type = tff.SequenceType(wrappers.tff_type(task.batch_spec))

    # A tf.function, as in TFF's own client work: TFF traces computations into
    # a plain graph without automatic control dependencies, where nothing would
    # order the weight assignments before the reads inside the dataset loop.
    @tf.function
    def evaluate_client(model, weights, dataset):
        model_weights = tff.learning.models.ModelWeights.from_model(model)
        tf.nest.map_structure(lambda v, t: v.assign(t), model_weights, weights)
        masks = wrappers.weight_masks(list(weights.non_trainable), index,
                                      len(model_weights.trainable), mask_biases)
        for v, masked in zip(model_weights.trainable,
                             wrappers.apply_weight_masks(model_weights.trainable, masks)):
            v.assign(masked)
        zero = tf.constant(0.0, tf.float64)
        totals = collections.OrderedDict(
            loss_sum=zero, num_examples=zero, word_errors=zero, words=zero,
            char_errors=zero, chars=zero)
        for batch in dataset:
            loss, n = task.batch_loss(model, batch, training=False)
            hyps, refs = task.predict_and_references(model, batch)
            word_errors, words = metrics.edit_distance_counts(refs, hyps, "word")
            char_errors, chars = metrics.edit_distance_counts(refs, hyps, "char")
            n = tf.cast(n, tf.float64)
            totals = collections.OrderedDict(
                loss_sum=totals["loss_sum"] + tf.cast(loss, tf.float64) * n,
                num_examples=totals["num_examples"] + n,
                word_errors=totals["word_errors"] + word_errors,
                words=totals["words"] + words,
                char_errors=totals["char_errors"] + char_errors,
                chars=totals["chars"] + chars)
        return totals

    @tff.tensorflow.computation(weights_type, data_type)
    def client_eval(weights, dataset):
        return evaluate_client(model_fn(), weights, dataset)

    @tff.federated_computation(tff.FederatedType(weights_type, tff.SERVER),
                               tff.FederatedType(data_type, tff.CLIENTS))
    def evaluate(weights, client_data):
        sums = tff.federated_map(
            client_eval, (tff.federated_broadcast(weights), client_data))
        return tff.federated_sum(sums)

    return evaluate


def finalize_eval_sums(sums) -> dict[str, float]:
    """Loss per example, WER and CER from the summed counts."""
    sums = {k: float(np.asarray(v)) for k, v in dict(sums).items()}
    n = max(sums["num_examples"], 1.0)
    return {
        "loss": sums["loss_sum"] / n,
        "wer": sums["word_errors"] / max(sums["words"], 1.0),
        "cer": sums["char_errors"] / max(sums["chars"], 1.0),
        "num_examples": sums["num_examples"],
    }
