"""How a round's client data reach the clients: as ids, or as datasets.

Where the task has `WorkerDatasets`, the clients of a computation receive
keys, ``<client_id, seed>``, and build their datasets inside TFF's workers:
the task's dataset function becomes a `tff.tensorflow.computation` composed
in front of each federated computation that takes client data
(`tff.simulation.compose_dataset_computation_with_computation`, the general
form of TFF's `compose_dataset_computation_with_learning_process`). Only ids
cross the wire, so a cohort or the held-out set is bounded by what a worker
holds, not by gRPC's 2 GiB message limit or the controller's memory.
(`tff.simulation.datasets.ClientData.dataset_computation` does the same from
an id alone; training data also need the round's seed, hence the key.)

Without `WorkerDatasets` (or with `by_id=False`) the controller builds the
datasets and TFF serializes them into the computation, as TFF's simulations do
by default.
"""

from __future__ import annotations

import collections
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.task import base

#: The key a client receives in place of its dataset.
CLIENT_KEY_TYPE = collections.OrderedDict(client_id=np.str_, seed=np.int64)


#: Batches a client's loop reads ahead of its step (see `loop_batches`).
LOOP_PREFETCH = 2


def without_rewrites(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` without tf.data's default graph rewrites, for a client's loop.

    A client computation runs its loop over the dataset once per call, and
    tf.data rewrites the dataset's graph each time a loop (or an iterator)
    starts: it serializes the dataset with its function library, which holds
    the whole training or evaluation step, and runs Grappler's tf.data
    optimizers on it. In the TFF worker that was a third of the CPU of a
    round whose clients had no data at all (`bench.round_costs --floor_only`),
    paid again by every client in every round; the rewrites (fusions and
    prefetch injection in a pipeline of a few batches) save less than that.
    """
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    return dataset.with_options(options)


def loop_batches(dataset: tf.data.Dataset) -> Iterator[Any]:
    """An iterator over `dataset` for a client's loop inside a `tf.function`:
    `for batch in loop_batches(dataset)` becomes a while loop in the client's
    own graph, reading `LOOP_PREFETCH` batches ahead, without tf.data's
    rewrites (`without_rewrites`).

    A loop over the dataset itself becomes a tf.data scan whose function (the
    whole step) tf.data instantiates, graph optimizations and all, every time
    the loop starts: it gives each instantiation a fresh state handle, so
    nothing is reused between calls. In the TFF worker that was about half
    the CPU of a round whose clients had no data and a quarter of a `small`
    round with data, paid by every client in every round. The while loop
    runs its ops on the worker's inter-op threads, which the owned workers
    size for it (`tff_prune.runtime.worker_binary.worker_environment`); the
    read-ahead keeps a client's step from waiting on its input pipeline.
    """
    return iter(without_rewrites(dataset).prefetch(LOOP_PREFETCH))


def round_seed(run_seed: int, round_num: int, position: int) -> int:
    """The data seed of the client at `position` of a round's cohort: shuffling
    and augmentation differ per round and client, and repeat on resume."""
    return run_seed * 1_000_003 + round_num * 1009 + position


class ClientInputs:
    """One split's client data: the values a computation's clients receive,
    and the computation that receives them."""

    def __init__(self, task: base.FederatedTask, *, training: bool, epochs: int = 1,
                 by_id: bool = True):
        self.task = task
        self.training = training
        self.epochs = epochs
        self.source: Optional[base.WorkerDatasets] = (
            task.worker_datasets(training=training) if by_id else None)
        self._composed: dict[int, tff.Computation] = {}
        self.dataset_computation: Optional[tff.Computation] = None
        if self.source is not None:
            dataset_fn = self.source.dataset_fn

            @tff.tensorflow.computation(CLIENT_KEY_TYPE)
            def client_dataset(key):
                return dataset_fn(key["client_id"], key["seed"]).repeat(epochs)

            self.dataset_computation = client_dataset

    @property
    def by_id(self) -> bool:
        """Whether clients build their datasets from keys inside the workers."""
        return self.source is not None

    @property
    def worker_root(self) -> Optional[str]:
        """The folder TFF workers run in (the task's dataset files' root)."""
        return None if self.source is None else self.source.root

    def values(self, client_ids: Sequence[str], seeds: Optional[Sequence[int]] = None,
               ) -> list[Any]:
        """What the clients receive: keys, or datasets built here."""
        seeds = list(seeds) if seeds is not None else [0] * len(client_ids)
        if self.by_id:
            return [collections.OrderedDict(client_id=c, seed=np.int64(s))
                    for c, s in zip(client_ids, seeds)]
        return [self.task.client_dataset(c, training=self.training, seed=s).repeat(self.epochs)
                for c, s in zip(client_ids, seeds)]

    def compose(self, computation: tff.Computation) -> tff.Computation:
        """`computation` with its client datasets built from keys (itself when
        the controller builds datasets); composed once per computation."""
        if not self.by_id:
            return computation
        key = id(computation)
        if key not in self._composed:
            self._composed[key] = tff.simulation.compose_dataset_computation_with_computation(
                self.dataset_computation, computation)
            # Forgotten with the computation (e.g. a compact architecture's
            # round, once dropped): its id is reused only after that.
            weakref.finalize(computation, self._composed.pop, key, None)
        return self._composed[key]

