"""The KWS task's registry entry: its flags (all ``--kws_*``), config and builders."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from absl import flags

from tasks.kws import data as data_lib
from tasks.kws import model as model_lib
from tasks.kws import task as task_lib
from tasks.kws.corpus import KwsCorpusError
from tff_prune.pruning import config as config_lib
from tff_prune.task import base


@dataclasses.dataclass(frozen=True)
class KwsConfig:
    """Everything that decides the KWS task: its corpus and its model/data settings."""

    corpus: data_lib.CorpusConfig = data_lib.CorpusConfig()
    model: task_lib.KwsTaskConfig = task_lib.KwsTaskConfig()


_DEFINED = []


def define_flags() -> None:
    """The KWS task's absl flags (once)."""
    if _DEFINED:
        return
    _DEFINED.append(True)
    defaults = data_lib.CorpusConfig()
    flags.DEFINE_string("kws_corpus_dir", None,
                        "Speech-Commands-layout folder (WORD/SPEAKER_nohash_N.wav, optional "
                        "_background_noise_/ and testing_list.txt). Default: the built-in "
                        "synthetic eSpeak corpus.")
    flags.DEFINE_string("kws_cache_dir", defaults.cache_dir,
                        "Synthetic corpus: where it is generated once and cached.")
    flags.DEFINE_integer("kws_num_train_speakers", defaults.num_train_speakers,
                         "Synthetic corpus: training speakers.")
    flags.DEFINE_integer("kws_num_test_speakers", defaults.num_test_speakers,
                         "Held-out speakers (synthetic corpus, or a folder without "
                         "testing_list.txt).")
    flags.DEFINE_integer("kws_clips_per_speaker", defaults.clips_per_speaker,
                         "Synthetic corpus: 1-s clips per speaker.")
    flags.DEFINE_float("kws_dirichlet_alpha", defaults.dirichlet_alpha,
                       "Synthetic corpus: concentration of each speaker's class frequencies "
                       "(small: very non-IID).")
    flags.DEFINE_bool("kws_strict_data", False,
                      "Fail on the first bad WAV file instead of skipping bad files.")
    flags.DEFINE_enum("kws_model_size", task_lib.KwsTaskConfig.model_size,
                      list(model_lib.MODEL_PRESETS), "DS-CNN preset (channels x blocks).")
    flags.DEFINE_float("kws_dropout", task_lib.KwsTaskConfig.dropout,
                       "Dropout before the DS-CNN's classifier.")


def config_from_flags(values: flags.FlagValues, *, batch_size: int, seed: int) -> KwsConfig:
    """`KwsConfig` from the parsed flags; `ConfigError` with one line on a bad value."""
    if not 0.0 <= values.kws_dropout < 1.0:
        raise config_lib.ConfigError(f"--kws_dropout must be in [0, 1), not {values.kws_dropout}")
    for name in ("kws_num_train_speakers", "kws_num_test_speakers", "kws_clips_per_speaker"):
        if getattr(values, name) < 1:
            raise config_lib.ConfigError(f"--{name} must be >= 1, not {getattr(values, name)}")
    if not values.kws_dirichlet_alpha > 0:
        raise config_lib.ConfigError(
            f"--kws_dirichlet_alpha must be > 0, not {values.kws_dirichlet_alpha}")
    return KwsConfig(
        corpus=data_lib.CorpusConfig(
            corpus_dir=values.kws_corpus_dir, num_test_speakers=values.kws_num_test_speakers,
            strict=values.kws_strict_data, seed=seed, cache_dir=values.kws_cache_dir,
            num_train_speakers=values.kws_num_train_speakers,
            clips_per_speaker=values.kws_clips_per_speaker,
            dirichlet_alpha=values.kws_dirichlet_alpha),
        model=task_lib.KwsTaskConfig(model_size=values.kws_model_size,
                                     dropout=values.kws_dropout, batch_size=batch_size))


def build(config: KwsConfig) -> task_lib.KwsTask:
    """Loads (or synthesizes) the corpus and returns the task."""
    train, test = data_lib.load_corpora(config.corpus)
    return task_lib.KwsTask(train, test, config.model)


def export(record: Mapping[str, Any]) -> base.TaskExport:
    """The serving side of a saved KWS model (`KwsTask.model_record`)."""
    from tasks.kws import export as export_lib  # pylint: disable=import-outside-toplevel
    return export_lib.KwsExport.from_record(record)


SPEC = base.TaskSpec(name="kws", define_flags=define_flags,
                     config_from_flags=config_from_flags, build=build, export=export,
                     user_errors=(KwsCorpusError,), default_config=KwsConfig,
                     default_client_batch_size=8)
