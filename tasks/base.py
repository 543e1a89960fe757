"""The small interface between what is trained (a task) and how (tff_prune).

The federated-pruning library only needs a task to give it: a fresh Keras
model, per-client training/evaluation datasets already batched, a per-example
loss on a batch, and decoded predictions for its error metrics. Anything else
(corpora, features, vocabularies) stays inside the task package, so a second
task plugs in by implementing this class.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf


class FederatedTask(abc.ABC):
    """A federated learning task: model, client data and loss."""

    name: str

    @property
    @abc.abstractmethod
    def train_client_ids(self) -> Sequence[str]:
        """Clients of the training population (sorted)."""

    @property
    @abc.abstractmethod
    def test_client_ids(self) -> Sequence[str]:
        """Held-out clients, never seen in training (sorted)."""

    @abc.abstractmethod
    def build_model(self) -> tf.keras.Model:
        """A fresh, unpruned Keras model; the pruning library wraps its layers."""

    @abc.abstractmethod
    def client_dataset(self, client_id: str, *, training: bool,
                       seed: int = 0) -> tf.data.Dataset:
        """Batched dataset of one client (`batch_spec` elements)."""

    @abc.abstractmethod
    def pooled_dataset(self, *, training: bool, seed: int = 0) -> tf.data.Dataset:
        """All clients of the split pooled (for centralized training/eval)."""

    @property
    @abc.abstractmethod
    def batch_spec(self) -> Any:
        """`tf.TensorSpec` structure of one batch, as `client_dataset` yields."""

    @abc.abstractmethod
    def batch_loss(self, model: tf.keras.Model, batch: Any,
                   training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """(mean loss over the batch's examples, number of examples)."""

    @abc.abstractmethod
    def predict_and_references(self, model: tf.keras.Model,
                               batch: Any) -> tuple[tf.Tensor, tf.Tensor]:
        """Decoded predictions and references as tf.string vectors, in graph."""

    @abc.abstractmethod
    def describe(self) -> Mapping[str, Any]:
        """JSON-able facts about the task (data sizes, model config)."""
