"""The KWS serving side: a DS-CNN rebuilt from a run's record, and its SavedModel.

Signature ``serving_default`` (TF Serving's ``tensorflow/serving/predict``):
``audio`` float32 [B, N] (16 kHz waveforms in [-1, 1]; the first second is
used, shorter rows are zero-padded, as in training) -> ``scores`` float32
[B, classes] (softmax), ``label`` string [B] (the best class) and
``class_id`` int32 [B]. The log-mel front end is the training one
(`tasks.kws.features.clip_features`), core TensorFlow ops only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tasks.kws import compaction
from tasks.kws import features as features_lib
from tasks.kws import model as model_lib
from tasks.kws import task as task_lib
from tasks.kws.corpus import CLIP_SAMPLES
from tff_prune.export import compaction as compaction_lib
from tff_prune.task import base

SERVING_SIGNATURE = "serving_default"


def build_serving_module(model: tf.keras.Model, feature: features_lib.FeatureConfig,
                         class_names: Sequence[str]) -> tuple[tf.Module, dict[str, Any]]:
    """A `tf.Module` holding only the model's variables, and its signatures."""
    module = tf.Module()
    module.model_variables = list(model.variables)
    names = tf.constant(list(class_names))

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="audio")])
    def serve(audio):
        logits = model(features_lib.clip_features(features_lib.fix_length(audio), feature),
                       training=False)
        class_id = tf.argmax(logits, -1, output_type=tf.int32)
        return {"scores": tf.nn.softmax(logits), "label": tf.gather(names, class_id),
                "class_id": class_id}

    module.serve = serve
    return module, {SERVING_SIGNATURE: serve}


@dataclasses.dataclass(frozen=True)
class KwsExport(base.TaskExport):
    """A saved KWS run's model, compaction and serving SavedModel."""

    model_config: model_lib.DsCnnConfig
    feature: features_lib.FeatureConfig
    class_names: tuple[str, ...]
    model_name = "kws"

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "KwsExport":
        """From `KwsTask.model_record()` (as read back from JSON)."""
        if record.get("task_name") != "kws":
            raise ValueError(f"not a KWS model record: task {record.get('task_name')!r}")
        return cls(model_lib.DsCnnConfig.from_json(record["model"]),
                   features_lib.FeatureConfig(**record["feature"]),
                   tuple(record["class_names"]))

    def build_model(self) -> tf.keras.Model:
        return model_lib.build_ds_cnn(self.model_config)

    def compactor(self) -> base.Compactor:
        return compaction.DsCnnCompactor(self.model_config)

    def max_output_difference(self, a: tf.keras.Model, b: tf.keras.Model) -> float:
        cfg = self.model_config
        rng = np.random.default_rng(0)
        batch = rng.standard_normal((4, cfg.num_frames, cfg.num_mel_bins)).astype(np.float32)
        return compaction_lib.max_output_difference(a, b, tf.constant(batch))

    def save_serving_model(self, model: tf.keras.Model, path: str) -> Sequence[str]:
        module, signatures = build_serving_module(model, self.feature, self.class_names)
        tf.saved_model.save(module, path, signatures=signatures)
        return list(signatures)

    def on_device_training(self) -> base.OnDeviceTraining:
        """One cross-entropy step on a batch of log-mel clips."""
        cfg = self.model_config
        features = tf.TensorSpec([None, cfg.num_frames, cfg.num_mel_bins], tf.float32)

        def loss(model, inputs):
            return task_lib.cross_entropy_batch_loss(
                model, (inputs["features"], inputs["labels"]), training=True)

        def infer(model, inputs):
            return {"logits": model(inputs["features"], training=False)}

        return base.OnDeviceTraining(
            train_inputs={"features": features, "labels": tf.TensorSpec([None], tf.int32)},
            loss=loss, infer_inputs={"features": features}, infer=infer)

    def example_training_batch(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Batch 1: one random clip's features and a random class."""
        cfg = self.model_config
        rng = np.random.default_rng(seed)
        return {"features": rng.standard_normal(
                    (1, cfg.num_frames, cfg.num_mel_bins)).astype(np.float32),
                "labels": rng.integers(0, len(self.class_names), (1,)).astype(np.int32)}

    def metadata(self) -> dict[str, Any]:
        return {"model_config": dataclasses.asdict(self.model_config),
                "feature_config": dataclasses.asdict(self.feature),
                "class_names": list(self.class_names), "clip_samples": CLIP_SAMPLES,
                "sample_rate": self.feature.sample_rate}
