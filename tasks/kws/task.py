"""The KWS task: speakers' 1-s clips -> log-mel arrays -> DS-CNN class logits.

Each client's clips are read and featurized once, eagerly, in this process,
and kept as numpy arrays; client datasets are built from those arrays with
core TF ops only (TFF's C++ worker serializes them). SpecAugment and a seeded
shuffle run inside the dataset, on training data only.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from tasks.asr import features as asr_features
from tasks.kws import corpus as corpus_lib
from tasks.kws import features as features_lib
from tasks.kws import model as model_lib
from tasks.kws import units
from tasks.kws.corpus import CLASS_NAMES, KwsCorpus
from tff_prune.task import base


@dataclasses.dataclass(frozen=True)
class KwsTaskConfig:
    """Everything that decides the KWS task's features and model."""

    model_size: str = "small"
    dropout: float = 0.1
    batch_size: int = 16
    feature: features_lib.FeatureConfig = features_lib.DEFAULT_FEATURES
    spec_augment: Optional[asr_features.SpecAugmentConfig] = features_lib.DEFAULT_SPEC_AUGMENT

    def model_config(self) -> model_lib.DsCnnConfig:
        return model_lib.DsCnnConfig.preset(
            self.model_size, num_frames=features_lib.num_frames(self.feature),
            num_mel_bins=self.feature.num_mel_bins, num_classes=len(CLASS_NAMES),
            dropout=self.dropout)


def classification_sums(logits: tf.Tensor, labels: tf.Tensor,
                        class_names: Sequence[str]) -> dict[str, tf.Tensor]:
    """float64 counts of one batch: correct, total, and per class its examples
    (``count_<class>``) and misclassified ones (``errors_<class>``)."""
    labels = tf.cast(labels, tf.int32)
    # tf.not_equal, not `!=`: inside TFF's graphs `!=` may compare tensor identity.
    wrong = tf.cast(tf.not_equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                    tf.float64)
    one_hot = tf.one_hot(labels, len(class_names), dtype=tf.float64)
    counts = tf.reduce_sum(one_hot, 0)
    errors = tf.reduce_sum(one_hot * wrong[:, tf.newaxis], 0)
    total = tf.cast(tf.size(labels), tf.float64)
    sums = collections.OrderedDict(correct=total - tf.reduce_sum(wrong), total=total)
    for i, name in enumerate(class_names):
        sums[f"count_{name}"] = counts[i]
        sums[f"errors_{name}"] = errors[i]
    return sums


@dataclasses.dataclass
class _ClientArrays:
    features: np.ndarray  # float32 [N, frames, mels]
    labels: np.ndarray    # int32 [N]


def cross_entropy_batch_loss(model: tf.keras.Model, batch: Any,
                             training: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """(mean cross-entropy, number of examples) of a ``(features, labels)`` batch
    (`KwsTask.batch_loss`, and the on-device training artifact's loss)."""
    features, labels = batch
    logits = model(features, training=training)
    per_example = tf.keras.losses.sparse_categorical_crossentropy(
        labels, logits, from_logits=True)
    return tf.reduce_mean(per_example), tf.shape(per_example)[0]


class KwsTask(base.FederatedTask):
    """Keyword spotting with speakers as clients."""

    name = "kws"

    def __init__(self, train_corpus: KwsCorpus, test_corpus: KwsCorpus,
                 config: KwsTaskConfig = KwsTaskConfig()):
        self.config = config
        self.model_config = config.model_config()
        self.class_names = CLASS_NAMES
        self.train_corpus, self.test_corpus = train_corpus, test_corpus
        self._cache: dict[tuple[bool, str], _ClientArrays] = {}

    # -- data ---------------------------------------------------------------------

    @property
    def train_client_ids(self) -> Sequence[str]:
        return list(self.train_corpus.client_ids)

    @property
    def test_client_ids(self) -> Sequence[str]:
        return list(self.test_corpus.client_ids)

    @property
    def batch_spec(self) -> Any:
        cfg = self.model_config
        return (tf.TensorSpec([None, cfg.num_frames, cfg.num_mel_bins], tf.float32),
                tf.TensorSpec([None], tf.int32))

    def client_arrays(self, client_id: str, *, training: bool) -> _ClientArrays:
        """One client's features and labels (featurized on first use, then cached)."""
        key = (training, client_id)
        if key not in self._cache:
            clips = (self.train_corpus if training else self.test_corpus).clips(client_id)
            self._cache[key] = _ClientArrays(
                features_lib.featurize(corpus_lib.read_clips(clips), self.config.feature),
                np.array([c.label for c in clips], np.int32))
        return self._cache[key]

    def client_dataset(self, client_id: str, *, training: bool,
                       seed: int = 0) -> tf.data.Dataset:
        arrays = self.client_arrays(client_id, training=training)
        return self._dataset(arrays.features, arrays.labels, training=training, seed=seed)

    def pooled_dataset(self, *, training: bool, seed: int = 0) -> tf.data.Dataset:
        ids = self.train_client_ids if training else self.test_client_ids
        parts = [self.client_arrays(c, training=training) for c in ids]
        return self._dataset(np.concatenate([p.features for p in parts]),
                             np.concatenate([p.labels for p in parts]),
                             training=training, seed=seed)

    def _dataset(self, features: np.ndarray, labels: np.ndarray, *, training: bool,
                 seed: int) -> tf.data.Dataset:
        dataset = tf.data.Dataset.from_tensor_slices((features, labels))
        augment = self.config.spec_augment if training else None
        if training:
            dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        if augment is not None:
            def masked(index, example):
                feats, label = example
                mask_seed = tf.stack([tf.cast(seed, tf.int64), index])
                return asr_features.spec_augment(feats, augment, seed=mask_seed), label
            dataset = dataset.enumerate().map(masked)
        return dataset.batch(self.config.batch_size)

    # -- model, loss, metrics -------------------------------------------------------

    def build_model(self) -> tf.keras.Model:
        return model_lib.build_ds_cnn(self.model_config)

    def batch_loss(self, model: tf.keras.Model, batch: Any,
                   training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        return cross_entropy_batch_loss(model, batch, training)

    @property
    def metrics(self) -> Sequence[base.Metric]:
        return (base.Metric("accuracy", lower_is_better=False,
                            description="share of clips classified right"),
                *(base.Metric(f"error_{name}", description=f"share of {name!r} clips "
                              "classified wrong (0 without such clips)", detail=True)
                  for name in self.class_names))

    def metric_sums(self, model: tf.keras.Model, batch: Any) -> Mapping[str, tf.Tensor]:
        features, labels = batch
        return classification_sums(model(features, training=False), labels, self.class_names)

    def finalize_metrics(self, sums: Mapping[str, float]) -> dict[str, float]:
        out = {"accuracy": sums["correct"] / max(sums["total"], 1.0)}
        for name in self.class_names:
            out[f"error_{name}"] = sums[f"errors_{name}"] / max(sums[f"count_{name}"], 1.0)
        return out

    # -- pruning, compaction, export ------------------------------------------------

    @property
    def excluded_layers(self) -> str:
        return model_lib.EXCLUDE_LAYERS

    @property
    def model_structure(self) -> base.ModelStructure:
        return units.DsCnnStructure(self.model_config.num_blocks)

    def compactor(self) -> base.Compactor:
        from tasks.kws import compaction  # pylint: disable=import-outside-toplevel
        return compaction.DsCnnCompactor(self.model_config)

    def model_record(self) -> dict[str, Any]:
        return {"task_name": self.name, "model": dataclasses.asdict(self.model_config),
                "feature": dataclasses.asdict(self.config.feature),
                "class_names": list(self.class_names), "task": dataclasses.asdict(self.config)}

    def describe(self) -> Mapping[str, Any]:
        return {
            "task": self.name,
            "train_speakers": len(self.train_client_ids),
            "test_speakers": len(self.test_client_ids),
            "train_clips": self.train_corpus.class_counts(),
            "test_clips": self.test_corpus.class_counts(),
            "skipped_files": dict(self.train_corpus.skipped),
            "model": dataclasses.asdict(self.model_config),
            "batch_size": self.config.batch_size,
        }
