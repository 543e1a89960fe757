"""Federated evaluation on held-out clients with the current masks.

Each client evaluates its own examples with the masked global model and
returns sums (loss, examples and the task's metric counts, e.g. word and
character edit distances and reference lengths); the server adds them up, so
the task's rates are exact corpus-level rates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.federated import client_data
from tff_prune.model import evaluation
from tff_prune.model import wrappers
from tff_prune.task import base


def build_federated_evaluation(
    task: base.FederatedTask,
    model_fn: Callable[[], tf.keras.Model],
    index: wrappers.PrunableWeightIndex,
    mask_biases: bool,
    weights_type: Optional[tff.types.Type] = None,
) -> tff.Computation:
    """(server ModelWeights, client datasets) -> summed metrics at the server.

    `weights_type`: the TFF type of `model_fn()`'s ModelWeights when the
    caller has it (else a model is built to read it).
    """
    if weights_type is None:
        weights_type = wrappers.model_weights_type(model_fn())
    data_type = tff.SequenceType(wrappers.tff_type(task.batch_spec))

    # A tf.function, as in TFF's own client work: TFF traces computations into
    # a plain graph without automatic control dependencies, where nothing would
    # order the weight assignments before the reads inside the dataset loop.
    @tf.function
    def evaluate_client(model, weights, dataset):
        model_weights = tff.learning.models.ModelWeights.from_model(model)
        # Position by position: `weights` may hold tuples where the model has lists.
        for variables, values in ((model_weights.trainable, weights.trainable),
                                  (model_weights.non_trainable, weights.non_trainable)):
            for v, t in zip(variables, values, strict=True):
                v.assign(t)
        masks = wrappers.weight_masks(list(weights.non_trainable), index,
                                      len(model_weights.trainable), mask_biases)
        for v, masked in zip(model_weights.trainable,
                             wrappers.apply_weight_masks(model_weights.trainable, masks)):
            v.assign(masked)
        # One trace of the batch's sums: its outputs name the totals (no data
        # read), and the loop calls the same function.
        batch_sums = tf.function(
            lambda b: evaluation.evaluation_sums(task, model, b)
        ).get_concrete_function(task.batch_spec)
        totals = tf.nest.map_structure(lambda t: tf.zeros(t.shape, tf.float64),
                                       batch_sums.structured_outputs)
        # A while loop over an iterator, as the client work's (see there).
        for batch in client_data.loop_batches(dataset):
            totals = tf.nest.map_structure(tf.add, totals, batch_sums(batch))
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


def finalize_eval_sums(task: base.FederatedTask, sums) -> dict[str, float]:
    """Loss per example and the task's metrics from the summed counts."""
    return evaluation.finalize_sums(task, sums)
