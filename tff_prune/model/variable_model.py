"""A task's Keras model as a `tff.learning.models.VariableModel`.

Lets TFF's own algorithms (e.g. `tff.learning.algorithms.build_weighted_fed_avg`)
train the same model with the same loss, so that our process can be checked
against them: with pruning off, one round must give the same weights.
"""

from __future__ import annotations

import collections
from typing import Any

import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.task import base


class TaskVariableModel(tff.learning.models.VariableModel):
    """Wraps `task.build_model()`; the loss is `task.batch_loss`."""

    def __init__(self, task: base.FederatedTask, keras_model: tf.keras.Model):
        self._task = task
        self._model = keras_model
        self._loss_sum = tf.Variable(0.0, trainable=False, name="loss_sum")
        self._num_examples = tf.Variable(0, dtype=tf.int64, trainable=False,
                                         name="num_examples")

    @property
    def trainable_variables(self):
        return self._model.trainable_variables

    @property
    def non_trainable_variables(self):
        return self._model.non_trainable_variables

    @property
    def local_variables(self):
        return [self._loss_sum, self._num_examples]

    @property
    def input_spec(self) -> Any:
        return self._task.batch_spec

    @tf.function
    def predict_on_batch(self, batch_input, training=True):
        return self._model(batch_input, training=training)

    @tf.function
    def forward_pass(self, batch_input, training=True):
        loss, n = self._task.batch_loss(self._model, batch_input, training)
        self._loss_sum.assign_add(loss * tf.cast(n, tf.float32))
        self._num_examples.assign_add(tf.cast(n, tf.int64))
        return tff.learning.models.BatchOutput(loss=loss, predictions=None,
                                               num_examples=n)

    @tf.function
    def report_local_unfinalized_metrics(self):
        return collections.OrderedDict(
            loss=[self._loss_sum.read_value(), self._num_examples.read_value()])

    def metric_finalizers(self):
        return collections.OrderedDict(
            loss=tf.function(lambda v: v[0] / tf.cast(tf.maximum(v[1], 1), tf.float32)))

    @tf.function
    def reset_metrics(self):
        self._loss_sum.assign(0.0)
        self._num_examples.assign(0)
