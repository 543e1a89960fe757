"""The ASR task: speakers' utterances -> log-mel batches -> Conformer-CTC.

Featurization happens once per client, eagerly, in this process (FLAC decoding
uses a tensorflow-io custom op that TFF's C++ worker does not have). Client
datasets are then built from those in-memory arrays with core TF ops only, so
TFF can serialize them to its worker; SpecAugment, shuffling and batching run
inside the dataset, seeded, on training data only.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from tasks import base
from tasks.asr import ctc
from tasks.asr import features as features_lib
from tasks.asr import metrics as metrics_lib
from tasks.asr import model as model_lib
from tasks.asr import text
from tasks.asr import units
from tasks.asr.corpus import SpeechCorpus, Utterance

MODEL_PRESETS = ("micro", "tiny", "small", "medium", "paper")


@dataclasses.dataclass(frozen=True)
class AsrTaskConfig:
    """Everything that decides the ASR task's data and model."""

    model_size: str = "small"
    dropout: float = 0.1
    batch_size: int = 8
    max_utterance_seconds: float = 16.0
    feature: features_lib.FeatureConfig = features_lib.FeatureConfig()
    spec_augment: Optional[features_lib.SpecAugmentConfig] = (
            features_lib.SpecAugmentConfig())

    def model_config(self) -> model_lib.ConformerConfig:
        if self.model_size not in MODEL_PRESETS:
            raise ValueError(f"unknown model size {self.model_size!r}; "
                             f"choose one of {', '.join(MODEL_PRESETS)}")
        preset = getattr(model_lib.ConformerConfig, self.model_size)
        return preset(num_mel_bins=self.feature.num_mel_bins, dropout=self.dropout)


@dataclasses.dataclass
class _ClientFeatures:
    """One client's featurized utterances, padded into dense arrays."""

    features: np.ndarray        # float32 [N, T_max, F]
    feature_lengths: np.ndarray  # int32 [N]
    labels: np.ndarray          # int32 [N, L_max], 0-padded
    label_lengths: np.ndarray   # int32 [N]

    @property
    def num_examples(self) -> int:
        return int(self.features.shape[0])


def _pad_client(feats: list[np.ndarray], labels: list[list[int]],
                num_mel_bins: int) -> _ClientFeatures:
    """Pads one client's variable-length features and labels into arrays."""
    n = len(feats)
    padded = np.zeros([n, max(f.shape[0] for f in feats), num_mel_bins], np.float32)
    padded_labels = np.zeros([n, max(len(l) for l in labels)], np.int32)
    for i, (f, l) in enumerate(zip(feats, labels)):
        padded[i, :f.shape[0]] = f
        padded_labels[i, :len(l)] = l
    return _ClientFeatures(
        features=padded,
        feature_lengths=np.array([f.shape[0] for f in feats], np.int32),
        labels=padded_labels,
        label_lengths=np.array([len(l) for l in labels], np.int32))


def ctc_feasible(utterance: Utterance, feature_config: features_lib.FeatureConfig,
                 ) -> bool:
    """Whether CTC can align the transcript to the model's output frames."""
    if utterance.sample_rate != feature_config.sample_rate:
        return False
    frames = features_lib.num_feature_frames(utterance.num_samples, feature_config)
    labels = text.encode(utterance.transcript)
    return bool(labels) and ctc.feasible_ctc_alignment(
            labels, model_lib.output_lengths(frames))


class AsrTask(base.FederatedTask):
    """Speech recognition with speakers as clients."""

    name = "asr"

    def __init__(self, train_corpus: SpeechCorpus, test_corpus: SpeechCorpus,
                 config: AsrTaskConfig = AsrTaskConfig()):
        self.config = config
        self.model_config = config.model_config()
        self.skipped: collections.Counter = collections.Counter()
        # Per split: {character: times normalize_transcript dropped it}.
        self.dropped_characters: dict[str, dict[str, int]] = {}
        self.train_corpus = self._usable(train_corpus, "train")
        self.test_corpus = self._usable(test_corpus, "test")
        self._cache: dict[tuple[str, str], _ClientFeatures] = {}

    def _usable(self, corpus: SpeechCorpus, split: str) -> SpeechCorpus:
        """Drops utterances too long or that CTC cannot align, with counts."""
        self._count_dropped_characters(corpus, split)
        max_samples = self.config.max_utterance_seconds * self.config.feature.sample_rate
        too_long = [0]
        infeasible = [0]

        def keep(u: Utterance) -> bool:
            if u.num_samples > max_samples:
                too_long[0] += 1
                return False
            if not ctc_feasible(u, self.config.feature):
                infeasible[0] += 1
                return False
            return True

        usable = corpus.filter_utterances(keep)
        if too_long[0] or infeasible[0]:
            logging.warning(
                    "%s split: skipped %d utterances longer than %.0f s and %d whose "
                    "transcript has more characters than the model has output frames",
                    split, too_long[0], self.config.max_utterance_seconds, infeasible[0])
        self.skipped[f"{split}: too long"] += too_long[0]
        self.skipped[f"{split}: CTC-infeasible"] += infeasible[0]
        if not usable.client_ids:
            raise ValueError(f"the {split} split has no usable utterances")
        return usable

    def _count_dropped_characters(self, corpus: SpeechCorpus, split: str) -> None:
        """Logs (once per split) and records characters the vocabulary cannot encode."""
        dropped, _, summary = text.describe_dropped(
                u.transcript for u in corpus.all_utterances())
        self.dropped_characters[split] = dict(dropped)
        if dropped:
            logging.warning("%s split: %s", split, summary)

    # -- FederatedTask -----------------------------------------------------------

    @property
    def train_client_ids(self) -> Sequence[str]:
        return list(self.train_corpus.client_ids)

    @property
    def test_client_ids(self) -> Sequence[str]:
        return list(self.test_corpus.client_ids)

    def build_model(self) -> tf.keras.Model:
        return model_lib.build_conformer_ctc(self.model_config, text.VOCAB_SIZE)

    @property
    def batch_spec(self) -> Any:
        num_mels = self.config.feature.num_mel_bins
        return (
                collections.OrderedDict(
                        features=tf.TensorSpec([None, None, num_mels], tf.float32),
                        feature_lengths=tf.TensorSpec([None], tf.int32)),
                collections.OrderedDict(
                        labels=tf.TensorSpec([None, None], tf.int32),
                        label_lengths=tf.TensorSpec([None], tf.int32)),
        )

    def num_examples(self, client_id: str, *, training: bool) -> int:
        return self._client_features(client_id, training).num_examples

    def client_dataset(self, client_id: str, *, training: bool,
                       seed: int = 0) -> tf.data.Dataset:
        return self._dataset([self._client_features(client_id, training)],
                             training=training, seed=seed)

    def pooled_dataset(self, *, training: bool, seed: int = 0) -> tf.data.Dataset:
        ids = self.train_client_ids if training else self.test_client_ids
        self._featurize(ids, training)
        return self._dataset([self._client_features(c, training) for c in ids],
                             training=training, seed=seed)

    def batch_loss(self, model: tf.keras.Model, batch: Any,
                   training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = batch
        logits = model(x, training=training)
        logit_lengths = model_lib.output_lengths(x["feature_lengths"])
        per_example = ctc.ctc_loss(y["labels"], y["label_lengths"], logits,
                                   logit_lengths)
        return tf.reduce_mean(per_example), tf.shape(per_example)[0]

    def predict_and_references(self, model: tf.keras.Model,
                               batch: Any) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = batch
        logits = model(x, training=False)
        hyps = ctc.greedy_decode_tf(logits, model_lib.output_lengths(x["feature_lengths"]))
        mask = tf.sequence_mask(y["label_lengths"], tf.shape(y["labels"])[1])
        refs = text.decode_tf(tf.ragged.boolean_mask(y["labels"], mask))
        return hyps, refs

    @property
    def metrics(self) -> Sequence[base.Metric]:
        return (base.Metric("wer", description="word error rate (greedy CTC, no LM)"),
                base.Metric("cer", description="character error rate"))

    def metric_sums(self, model: tf.keras.Model, batch: Any) -> Mapping[str, tf.Tensor]:
        hyps, refs = self.predict_and_references(model, batch)
        word_errors, words = metrics_lib.edit_distance_counts(refs, hyps, "word")
        char_errors, chars = metrics_lib.edit_distance_counts(refs, hyps, "char")
        return collections.OrderedDict(word_errors=word_errors, words=words,
                                       char_errors=char_errors, chars=chars)

    def finalize_metrics(self, sums: Mapping[str, float]) -> dict[str, float]:
        # Corpus-level rates: total edits over total reference tokens.
        return {"wer": sums["word_errors"] / max(sums["words"], 1.0),
                "cer": sums["char_errors"] / max(sums["chars"], 1.0)}

    @property
    def excluded_layers(self) -> str:
        return model_lib.EXCLUDED_FROM_PRUNING

    @property
    def model_structure(self) -> base.ModelStructure:
        return units.ConformerStructure(self.model_config.num_heads)

    def compactor(self) -> base.Compactor:
        from tasks.asr import compaction  # pylint: disable=import-outside-toplevel
        return compaction.ConformerCompactor(self.model_config, text.VOCAB_SIZE)

    def model_record(self) -> dict[str, Any]:
        return {"task_name": self.name, "model": dataclasses.asdict(self.model_config),
                "task": dataclasses.asdict(self.config)}

    def describe(self) -> Mapping[str, Any]:
        def utterances(corpus):
            return sum(len(corpus.utterances(c)) for c in corpus.client_ids)
        return {
                "task": self.name,
                "train_speakers": len(self.train_client_ids),
                "test_speakers": len(self.test_client_ids),
                "train_utterances": utterances(self.train_corpus),
                "test_utterances": utterances(self.test_corpus),
                "model": dataclasses.asdict(self.model_config),
                "batch_size": self.config.batch_size,
                "skipped": dict(self.skipped),
                "dropped_characters": dict(self.dropped_characters),
        }

    # -- data ------------------------------------------------------------------

    def _client_features(self, client_id: str, training: bool) -> _ClientFeatures:
        self._featurize([client_id], training)
        return self._cache[("train" if training else "test", client_id)]

    def _featurize(self, client_ids: Sequence[str], training: bool) -> None:
        """Featurizes the uncached clients among `client_ids` in one pass."""
        split = "train" if training else "test"
        corpus = self.train_corpus if training else self.test_corpus
        todo = [c for c in client_ids if (split, c) not in self._cache]
        if not todo:
            return
        feature_config = self.config.feature
        dataset = corpus.create_tf_dataset_for_clients(todo).map(
            lambda e: (features_lib.log_mel_features(e["audio"], feature_config),
                 e["transcript"]),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        elements = dataset.as_numpy_iterator()
        for client_id in todo:
            feats, labels = [], []
            for _ in corpus.utterances(client_id):
                feature, transcript = next(elements)
                feats.append(feature)
                labels.append(text.encode(transcript.decode("utf-8")))
            self._cache[(split, client_id)] = _pad_client(
                feats, labels, feature_config.num_mel_bins)

    def _dataset(self, clients: list[_ClientFeatures], *, training: bool,
                 seed: int) -> tf.data.Dataset:
        num_mels = self.config.feature.num_mel_bins
        parts = []
        for c in clients:
            parts.append(tf.data.Dataset.from_tensor_slices(
                    (c.features, c.feature_lengths, c.labels, c.label_lengths)).map(
                            lambda f, fl, l, ll: (f[:fl], fl, l[:ll], ll)))
        dataset = parts[0]
        for part in parts[1:]:
            dataset = dataset.concatenate(part)
        augment = self.config.spec_augment if training else None
        if training:
            total = sum(c.num_examples for c in clients)
            dataset = dataset.shuffle(total, seed=seed, reshuffle_each_iteration=True)

        def to_example(index, example):
            f, fl, l, ll = example
            if augment is not None:
                f = features_lib.spec_augment(f, augment, seed=tf.stack(
                        [tf.cast(seed, tf.int64), index]))
            return (collections.OrderedDict(features=f, feature_lengths=fl),
                            collections.OrderedDict(labels=l, label_lengths=ll))

        dataset = dataset.enumerate().map(to_example)
        return dataset.padded_batch(
                self.config.batch_size,
                padded_shapes=(
                        collections.OrderedDict(features=[None, num_mels], feature_lengths=[]),
                        collections.OrderedDict(labels=[None], label_lengths=[])))

