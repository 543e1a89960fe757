"""What a run costs and leaves: sparsity, model sizes, bytes per client, FLOPs.

Every number is read from the real thing: masks and weights of the server
state, the TFF types of the round computations, TF's registered FLOPs of one
step's graph.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.federated import wire
from tff_prune.model import client_cost
from tff_prune.model import wrappers
from tff_prune.pruning import stats
from tff_prune.task import base


def kernel_sparsity(weights: tff.learning.models.ModelWeights,
                    index: wrappers.PrunableWeightIndex,
                    covered_keys: tuple[str, ...]) -> dict[str, float]:
    """The method's sparsity (`stats.mask_sparsity` of the masks of the
    kernels it covers), per kernel and "overall"."""
    masks = {k: np.asarray(weights.non_trainable[i])
             for k, i in zip(index.keys, index.mask_index)}
    return {k: float(v) for k, v in stats.mask_sparsity(masks, covered_keys).items()}


def model_sizes(weights: tff.learning.models.ModelWeights) -> dict[str, int]:
    """Parameter counts and dense / sparse byte estimates of the masked model."""
    tensors = {str(i): np.asarray(t) for i, t in enumerate(weights.trainable)}
    params = int(sum(t.size for t in tensors.values()))
    nonzero = int(sum(np.count_nonzero(t) for t in tensors.values()))
    return {"params": params, "nonzero_params": nonzero,
            "dense_bytes": int(stats.dense_bytes(tensors)),
            "sparse_bytes": int(np.asarray(stats.sparse_bytes(tensors)))}


def round_wire_bytes(client_work: tff.learning.templates.ClientWorkProcess
                     ) -> tuple[int, int]:
    """(bytes down, bytes up) per client of a round run by `client_work`: the
    sizes of the value each client receives and of the result it sends, read
    from the client work's own type signature."""
    signature = client_work.next.type_signature
    return (wire.type_bytes(signature.parameter[1]),
            wire.type_bytes(signature.result.result))


def dense_bytes_per_client(index: wrappers.PrunableWeightIndex) -> int:
    """What dense FedAvg moves each way per client: the full model's weights."""
    return wire.type_bytes(wrappers.tff_type(tuple(
        tf.TensorSpec(s, tf.float32) for s in index.trainable_shapes)))


class ClientStepFlops:
    """FLOPs of one local training step of the model a round's clients train
    (`tff_prune.model.client_cost`), on one fixed batch so rounds compare; measured
    once per client model (architecture)."""

    def __init__(self, task: base.FederatedTask, seed: int):
        self._task = task
        self._seed = seed
        self._batch = None
        # Weak: a forgotten architecture's model function is not kept for this.
        self._flops: weakref.WeakKeyDictionary[Callable, int] = weakref.WeakKeyDictionary()

    def _measure(self, model: tf.keras.Model) -> int:
        if self._batch is None:
            # Read at the first count, once the process has seeded TensorFlow
            # with the run's seed: the shuffle that picks this batch combines
            # its own seed with TensorFlow's global one.
            self._batch = next(iter(self._task.client_dataset(
                self._task.train_client_ids[0], training=True, seed=self._seed)))
        return client_cost.training_step_flops(self._task, model, self._batch)

    def count(self, model_fn: Callable[[], tf.keras.Model], model: tf.keras.Model) -> None:
        """Measures `model_fn`'s architecture on `model`, one of its builds,
        sparing a Keras build of its own. Call it before TFF traces another
        model: Keras cannot call a model built eagerly once a model was built
        inside a `tf.compat.v1.Graph` ("invalid state")."""
        if model_fn not in self._flops:
            self._flops[model_fn] = self._measure(model)

    def __call__(self, model_fn: Callable[[], tf.keras.Model]) -> int:
        if model_fn not in self._flops:
            self._flops[model_fn] = self._measure(model_fn())
        return self._flops[model_fn]
