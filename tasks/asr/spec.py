"""The ASR task's registry entry: its flags, config and builders."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from absl import flags

from tasks.asr import data as data_lib
from tasks.asr import task as task_lib
from tasks.asr.corpus import CorpusError
from tff_prune.pruning import config as config_lib
from tff_prune.task import base


@dataclasses.dataclass(frozen=True)
class AsrConfig:
    """Everything that decides the ASR task: its corpora and its model/data settings."""

    corpus: data_lib.CorpusConfig = data_lib.CorpusConfig()
    model: task_lib.AsrTaskConfig = task_lib.AsrTaskConfig()


_DEFINED = []


def define_flags() -> None:
    """The ASR task's absl flags (once)."""
    if _DEFINED:
        return
    _DEFINED.append(True)
    flags.DEFINE_string("corpus_dir", None,
                        "LibriSpeech-layout directory (SPEAKER/CHAPTER/*.flac + "
                        "*.trans.txt). Default: the built-in synthetic eSpeak corpus.")
    flags.DEFINE_string("test_corpus_dir", None,
                        "Held-out LibriSpeech-layout directory (default: hold out "
                        "--num_test_speakers speakers of --corpus_dir).")
    flags.DEFINE_integer("num_test_speakers", 20, "Held-out speakers.")
    flags.DEFINE_integer("num_train_speakers", 200, "Synthetic corpus: training speakers.")
    flags.DEFINE_integer("utterances_per_speaker", 30, "Synthetic corpus: utterances each.")
    flags.DEFINE_integer("num_public_speakers", 0,
                         "Synthetic corpus: speakers beyond the clients and the held-out "
                         "ones (other voices, other sentences), for --train_split=public.")
    flags.DEFINE_enum("train_split", "train", list(data_lib.TRAIN_SPLITS),
                      "Synthetic corpus: train on the clients' speakers (train) or on the "
                      "public ones (public: e.g. a centralized seed model for "
                      "--initial_model that never saw a client's data).")
    flags.DEFINE_string("corpus_cache_dir", data_lib.DEFAULT_CACHE_DIR,
                        "Synthetic corpus: where it is generated once and cached.")
    flags.DEFINE_string("feature_cache_dir", data_lib.DEFAULT_FEATURE_CACHE_DIR,
                        "Where log-mel features are computed once per corpus and front "
                        "end (one TFRecord shard per speaker) and reused; TFF workers "
                        "(python -m tff_prune.worker) read their copy of it.")
    flags.DEFINE_bool("strict_data", False,
                      "Fail on the first bad file instead of skipping bad files.")
    flags.DEFINE_enum("model_size", "small", list(task_lib.MODEL_PRESETS),
                      "Conformer-CTC preset.")
    flags.DEFINE_float("dropout", 0.1, "Dropout rate of the Conformer.")


def config_from_flags(values: flags.FlagValues, *, batch_size: int, seed: int) -> AsrConfig:
    """`AsrConfig` from the parsed flags; `ConfigError` with one line on a bad value."""
    if not 0.0 <= values.dropout < 1.0:
        raise config_lib.ConfigError(f"--dropout must be in [0, 1), not {values.dropout}")
    return AsrConfig(
        corpus=data_lib.CorpusConfig(
            corpus_dir=values.corpus_dir, test_corpus_dir=values.test_corpus_dir,
            num_test_speakers=values.num_test_speakers, strict=values.strict_data,
            cache_dir=values.corpus_cache_dir, num_train_speakers=values.num_train_speakers,
            utterances_per_speaker=values.utterances_per_speaker, seed=seed,
            num_public_speakers=values.num_public_speakers, train_split=values.train_split,
            feature_cache_dir=values.feature_cache_dir),
        model=task_lib.AsrTaskConfig(model_size=values.model_size, dropout=values.dropout,
                                     batch_size=batch_size))


def build(config: AsrConfig) -> task_lib.AsrTask:
    """Loads (or synthesizes) the corpora, featurizes what the feature cache
    lacks, and returns the task."""
    # Headers only: the feature cache decodes each file once (and reports
    # the ones that fail), and a rerun decodes nothing.
    train, test = data_lib.load_corpora(config.corpus, verify_audio=False)
    return task_lib.AsrTask(train, test, config.model,
                            feature_cache_dir=config.corpus.feature_cache_dir,
                            strict=config.corpus.strict)


def export(record: Mapping[str, Any]) -> base.TaskExport:
    """The serving side of a saved ASR model (`AsrTask.model_record`)."""
    from tasks.asr import export as export_lib  # pylint: disable=import-outside-toplevel
    return export_lib.AsrExport.from_record(record)


SPEC = base.TaskSpec(name="asr", define_flags=define_flags,
                     config_from_flags=config_from_flags, build=build, export=export,
                     user_errors=(CorpusError,), default_config=AsrConfig,
                     # Of batches 8, 4 and 2, 2 converges fastest per example,
                     # for rounds ~20% longer here
                     # (bench/results/convergence_schedules.md).
                     default_client_batch_size=2)
