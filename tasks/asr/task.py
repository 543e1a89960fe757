"""The ASR task: speakers' utterances -> log-mel batches -> Conformer-CTC.

Features are computed once per corpus into the on-disk feature cache
(`feature_cache`: one TFRecord shard per speaker, each audio file decoded
once, reused by every later run and resume). A client's dataset reads its
speaker's shard with core TF ops only, so the same function runs here and
inside TFF's C++ workers, which build their clients' datasets from speaker
ids (`worker_datasets`); SpecAugment, shuffling and batching run inside the
dataset, seeded, on training data only. Nothing holds the corpus's features
in memory: a client's dataset holds at most that client's examples.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import tensorflow as tf
from absl import logging

from tasks.asr import ctc
from tasks.asr import feature_cache
from tasks.asr import features as features_lib
from tasks.asr import metrics as metrics_lib
from tasks.asr import model as model_lib
from tasks.asr import text
from tasks.asr import units
from tasks.asr.corpus import SpeechCorpus, Utterance
from tff_prune.task import base

MODEL_PRESETS = ("micro", "tiny", "small", "medium", "paper")
# Pooled (centralized) data: shards read at once, and the examples mixed.
_POOLED_CYCLE_LENGTH = 8
_POOLED_SHUFFLE_BUFFER = 2048


def ctc_batch_loss(model: tf.keras.Model, batch: Any, training: bool,
                   loss_fn=ctc.ctc_loss) -> tuple[tf.Tensor, tf.Tensor]:
    """(mean CTC loss, number of examples) of a ``(features, labels)`` batch.

    `AsrTask.batch_loss`; ``loss_fn`` `ctc.portable_ctc_loss` is the on-device
    training artifact's (TFLite has no CTC kernel).
    """
    x, y = batch
    logits = model(x, training=training)
    logit_lengths = model_lib.output_lengths(x["feature_lengths"])
    per_example = loss_fn(y["labels"], y["label_lengths"], logits, logit_lengths)
    return tf.reduce_mean(per_example), tf.shape(per_example)[0]


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
                 config: AsrTaskConfig = AsrTaskConfig(), *,
                 feature_cache_dir: Optional[str] = None, strict: bool = False):
        """Featurizes what the feature cache lacks (every speaker on a first run).

        `feature_cache_dir`: where the per-speaker feature shards live (a
        temporary folder removed with the task when None); `strict`: a file that fails to
        decode while featurizing raises `CorpusError` instead of being skipped.
        """
        self.config = config
        self.model_config = config.model_config()
        self.skipped: collections.Counter = collections.Counter()
        # Per split: {character: times normalize_transcript dropped it}.
        self.dropped_characters: dict[str, dict[str, int]] = {}
        # Without a cache folder, a temporary one that lives (and is removed)
        # with this task.
        self._temporary_cache = (None if feature_cache_dir else
                                 tempfile.TemporaryDirectory(prefix="tff_prune_features_"))
        self.feature_cache_dir = os.path.abspath(
            feature_cache_dir or self._temporary_cache.name)
        self.cached: dict[str, feature_cache.CachedSplit] = {}
        self.train_corpus = self._featurized(self._usable(train_corpus, "train"), "train", strict)
        self.test_corpus = self._featurized(self._usable(test_corpus, "test"), "test", strict)

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

    def _featurized(self, corpus: SpeechCorpus, split: str, strict: bool) -> SpeechCorpus:
        """Builds (or reuses) the split's feature shards; drops, with counts,
        the utterances whose audio failed to decode."""
        cached = feature_cache.build_feature_cache(
            self.feature_cache_dir, corpus, self.config.feature, strict=strict,
            description=f"{split} features")
        self.cached[split] = cached
        for problem in cached.problems:
            self.skipped[f"{split}: {problem.reason}"] += 1
        if cached.problems:
            logging.warning("%s split: %d utterances failed to decode (first: %s)", split,
                            len(cached.problems), cached.problems[0].message())
        kept = {u for ids in cached.kept.values() for u in ids}
        corpus = corpus.filter_utterances(lambda u: u.utterance_id in kept)
        if not corpus.client_ids:
            raise ValueError(f"the {split} split has no usable utterances")
        return corpus

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
        return self._split(training).num_examples[client_id]

    def client_dataset(self, client_id: str, *, training: bool,
                       seed: int = 0) -> tf.data.Dataset:
        split = self._split(training)
        path = os.path.join(split.root, split.shards[client_id])
        return self._batched(self._examples(path), training=training, seed=seed,
                             shuffle_buffer=self._shuffle_buffer(training))

    def worker_datasets(self, *, training: bool) -> base.WorkerDatasets:
        split = self._split(training)
        speakers = sorted(split.shards)
        shards = [split.shards[c] for c in speakers]  # relative to the cache root
        buffer = self._shuffle_buffer(training)

        def dataset_fn(client_id: tf.Tensor, seed: tf.Tensor) -> tf.data.Dataset:
            # Speaker id -> its shard, as a table inside the computation: only
            # the id crosses the wire; an unknown id reads "" and fails there.
            table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant(speakers), tf.constant(shards)), default_value="")
            return self._batched(self._examples(table.lookup(client_id)),
                                 training=training, seed=seed, shuffle_buffer=buffer)

        return base.WorkerDatasets(dataset_fn=dataset_fn, root=split.root)

    def pooled_dataset(self, *, training: bool, seed: int = 0) -> tf.data.Dataset:
        # Streams the shards one after another (shard order shuffled per
        # seed), mixing examples through a bounded buffer: never the whole
        # split in memory.
        split = self._split(training)
        paths = [os.path.join(split.root, split.shards[c])
                 for c in (self.train_client_ids if training else self.test_client_ids)]
        files = tf.data.Dataset.from_tensor_slices(paths)
        if training:
            files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        examples = files.interleave(self._examples, cycle_length=_POOLED_CYCLE_LENGTH,
                                    deterministic=True)
        return self._batched(examples, training=training, seed=seed,
                             shuffle_buffer=_POOLED_SHUFFLE_BUFFER)

    def batch_loss(self, model: tf.keras.Model, batch: Any,
                   training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        return ctc_batch_loss(model, batch, training)

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

        def hours(corpus):
            return sum(u.duration_s for u in corpus.all_utterances()) / 3600
        return {
                "task": self.name,
                "train_speakers": len(self.train_client_ids),
                "test_speakers": len(self.test_client_ids),
                "train_utterances": utterances(self.train_corpus),
                "test_utterances": utterances(self.test_corpus),
                "train_audio_hours": hours(self.train_corpus),
                "test_audio_hours": hours(self.test_corpus),
                "model": dataclasses.asdict(self.model_config),
                "batch_size": self.config.batch_size,
                "skipped": dict(self.skipped),
                "dropped_characters": dict(self.dropped_characters),
                "feature_cache": {"root": self.feature_cache_dir,
                                  **{split: dataclasses.asdict(c.stats)
                                     for split, c in self.cached.items()}},
        }

    # -- data ------------------------------------------------------------------

    def _split(self, training: bool) -> feature_cache.CachedSplit:
        return self.cached["train" if training else "test"]

    def _shuffle_buffer(self, training: bool) -> int:
        """The largest client's examples: a client's shuffle is a full one."""
        return max(self._split(training).num_examples.values())

    def _examples(self, path: tf.Tensor) -> tf.data.Dataset:
        return feature_cache.shard_dataset(path, self.config.feature.num_mel_bins)

    def _batched(self, examples: tf.data.Dataset, *, training: bool, seed: Any,
                 shuffle_buffer: int) -> tf.data.Dataset:
        """(features, labels) examples -> shuffled, augmented, padded batches."""
        num_mels = self.config.feature.num_mel_bins
        augment = self.config.spec_augment if training else None
        if training:
            examples = examples.shuffle(shuffle_buffer, seed=seed,
                                        reshuffle_each_iteration=True)

        def to_example(index, example):
            f, l = example
            if augment is not None:
                f = features_lib.spec_augment(f, augment, seed=tf.stack(
                        [tf.cast(seed, tf.int64), index]))
            return (collections.OrderedDict(features=f, feature_lengths=tf.shape(f)[0]),
                    collections.OrderedDict(labels=l, label_lengths=tf.shape(l)[0]))

        return examples.enumerate().map(to_example).padded_batch(
                self.config.batch_size,
                padded_shapes=(
                        collections.OrderedDict(features=[None, num_mels], feature_lengths=[]),
                        collections.OrderedDict(labels=[None], label_lengths=[])))
