"""Held-out evaluation of a task's model: loss, WER and CER."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import tensorflow as tf

from tasks import base
from tasks.asr import metrics


def evaluate_model(task: base.FederatedTask, model: tf.keras.Model,
                   batches: Iterable[Any]) -> dict[str, float]:
  """Mean loss (per example), corpus-level WER and CER over `batches`.

  Runs the model once per batch in a tf.function; WER/CER are computed with
  jiwer on the decoded strings (the reporting metric).
  """

  @tf.function(reduce_retracing=True)
  def step(batch):
    loss, n = task.batch_loss(model, batch, training=False)
    hyps, refs = task.predict_and_references(model, batch)
    return loss * tf.cast(n, tf.float32), n, hyps, refs

  total_loss, total_n = 0.0, 0
  hypotheses, references = [], []
  for batch in batches:
    loss_sum, n, hyps, refs = step(batch)
    total_loss += float(loss_sum)
    total_n += int(n)
    hypotheses.extend(h.decode("utf-8") for h in hyps.numpy())
    references.extend(r.decode("utf-8") for r in refs.numpy())
  if not total_n:
    raise ValueError("evaluation data is empty")
  return {
      "loss": total_loss / total_n,
      "wer": metrics.word_error_rate(references, hypotheses),
      "cer": metrics.char_error_rate(references, hypotheses),
      "num_examples": float(total_n),
      "examples": list(zip(references[:3], hypotheses[:3])),
  }
