"""The ASR task's serving side (`base.TaskExport`), rebuilt from a run's model record.

The record is `AsrTask.model_record()` (``final_model/model_config.json``):
``{"task_name": "asr", "model": ConformerConfig fields, "task": AsrTaskConfig
fields}``. Runs that saved none (centralized runs) give the experiment's task
config instead (``{"task": ...}`` without ``"model"``): either the task's
`AsrConfig` (``{"corpus": ..., "model": AsrTaskConfig fields}``) or, in older
summaries, the AsrTaskConfig fields themselves; the Conformer is then the
preset of its ``model_size``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import tensorflow as tf

from tasks.asr import compaction
from tasks.asr import ctc
from tasks.asr import features as features_lib
from tasks.asr import model as model_lib
from tasks.asr import serving
from tasks.asr import task as task_lib
from tasks.asr import text
from tff_prune.task import base


def _fields(cls, values: Mapping[str, Any]) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def _task_fields(task: Mapping[str, Any]) -> Mapping[str, Any]:
    """AsrTaskConfig fields of a record's or summary's ``task``, either shape."""
    if "model_size" not in task and isinstance(task.get("model"), Mapping):
        return task["model"]  # AsrConfig: {"corpus": ..., "model": AsrTaskConfig}
    return task


@dataclasses.dataclass(frozen=True)
class AsrExport(base.TaskExport):
    """A Conformer-CTC with its log-mel front end, served from raw audio."""

    model_config: model_lib.ConformerConfig
    feature_config: features_lib.FeatureConfig = features_lib.FeatureConfig()
    vocab_size: int = text.VOCAB_SIZE

    model_name: ClassVar[str] = "asr"
    tflite_signature: ClassVar[str] = serving.UTTERANCE_SIGNATURE

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "AsrExport":
        """From `AsrTask.model_record()`, or a summary's task config (no ``"model"``)."""
        task = _task_fields(record.get("task") or {})
        feature_config = features_lib.FeatureConfig(
            **_fields(features_lib.FeatureConfig, task.get("feature") or {}))
        if "model" in record:
            model_config = model_lib.ConformerConfig(
                **_fields(model_lib.ConformerConfig, record["model"]))
        elif "model_size" in task:
            model_config = task_lib.AsrTaskConfig(
                model_size=task["model_size"], dropout=task.get("dropout", 0.1),
                feature=feature_config).model_config()
        else:
            raise ValueError("the ASR model record has neither the model config nor "
                             "the task's model_size: cannot tell which model was saved")
        return cls(model_config=model_config, feature_config=feature_config)

    def build_model(self) -> tf.keras.Model:
        return model_lib.build_conformer_ctc(self.model_config, self.vocab_size)

    def compactor(self) -> compaction.ConformerCompactor:
        return compaction.ConformerCompactor(self.model_config, self.vocab_size)

    def max_output_difference(self, a: tf.keras.Model, b: tf.keras.Model) -> float:
        """max |logit diff| over valid frames of a padded batch of random features."""
        features, lengths = compaction.random_features(self.model_config.num_mel_bins)
        return compaction.max_logit_difference(a, b, features, lengths)

    def save_serving_model(self, model: tf.keras.Model, path: str) -> list[str]:
        return serving.save_serving_model(model, self.feature_config, path)

    def metadata(self) -> dict[str, Any]:
        return {"model_config": dataclasses.asdict(self.model_config),
                "feature_config": dataclasses.asdict(self.feature_config)}

    def example_request(self) -> tuple[str, dict[str, tf.Tensor]]:
        """Batch 1, 5 s of random audio, through the whole request."""
        return serving.SERVING_SIGNATURE, serving.latency_request(serving.SERVING_SIGNATURE)

    def on_device_training(self) -> base.OnDeviceTraining:
        """One CTC step on features (TFLite has no CTC kernel: the portable loss)."""
        num_mels = self.model_config.num_mel_bins
        infer_inputs = {"features": tf.TensorSpec([None, None, num_mels], tf.float32),
                        "feature_lengths": tf.TensorSpec([None], tf.int32)}

        def loss(model, inputs):
            features = {k: inputs[k] for k in infer_inputs}
            labels = {k: inputs[k] for k in ("labels", "label_lengths")}
            return task_lib.ctc_batch_loss(model, (features, labels), training=True,
                                           loss_fn=ctc.portable_ctc_loss)

        def infer(model, inputs):
            return {"logits": model(dict(inputs), training=False),
                    "logit_lengths": model_lib.output_lengths(inputs["feature_lengths"])}

        return base.OnDeviceTraining(
            train_inputs={**infer_inputs,
                          "labels": tf.TensorSpec([None, None], tf.int32),
                          "label_lengths": tf.TensorSpec([None], tf.int32)},
            loss=loss, infer_inputs=infer_inputs, infer=infer)

    def example_training_batch(self, seconds: float = 5.0, seed: int = 0
                               ) -> dict[str, np.ndarray]:
        """Batch 1: ``seconds`` of random features and a feasible random transcript
        of 12 characters per second (no character repeated back to back)."""
        request = serving.latency_request(serving.FEATURES_SIGNATURE, seconds, seed,
                                          self.feature_config)
        rng = np.random.default_rng(seed)
        labels = [int(rng.integers(1, self.vocab_size))]
        while len(labels) < int(12 * seconds):
            labels.append(int((labels[-1] - 1 + rng.integers(1, self.vocab_size - 1))
                              % (self.vocab_size - 1)) + 1)
        return {"features": request["features"].numpy(),
                "feature_lengths": request["feature_lengths"].numpy(),
                "labels": np.array([labels], np.int32),
                "label_lengths": np.array([len(labels)], np.int32)}
