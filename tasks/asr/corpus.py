"""The speech-corpus interface: utterances grouped by speaker, speakers are the federated clients.

TensorFlow is imported only when a tf.data pipeline is built, so indexing and
corpus generation (including its worker processes) stay light.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

from tff_prune.task import base

if TYPE_CHECKING:
    import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One audio file and its transcript."""

    utterance_id: str  # LibriSpeech id, "SPEAKER-CHAPTER-NNNN"
    speaker_id: str
    audio_path: str  # .flac
    transcript: str  # normalized: upper-case as LibriSpeech stores it
    num_samples: int
    sample_rate: int

    @property
    def duration_s(self) -> float:
        """Length of the audio in seconds."""
        return self.num_samples / self.sample_rate


class CorpusError(base.DataError):
    """One-line, user-facing data error (missing directory, bad file under strict loading...)."""


def _load_audio(path: "tf.Tensor") -> "tf.Tensor":
    """Read a mono 16-bit FLAC as float32 samples in [-1, 1)."""
    import tensorflow as tf
    import tensorflow_io as tfio

    pcm = tfio.audio.decode_flac(tf.io.read_file(path), dtype=tf.int16)  # [samples, channels]
    return tf.cast(pcm[:, 0], tf.float32) / 32768.0


class SpeechCorpus:
    """Utterances grouped by speaker; speakers are the federated clients."""

    def __init__(
        self,
        utterances_by_client: Mapping[str, Sequence[Utterance]],
        skipped: collections.Counter | None = None,
    ) -> None:
        """``utterances_by_client`` maps speaker id -> utterances (kept in the given order).

        Speakers with no utterances are dropped. ``skipped`` counts files the
        loader rejected, by reason.
        """
        self._utterances = {
            client_id: tuple(utterances)
            for client_id, utterances in sorted(utterances_by_client.items())
            if utterances
        }
        self.client_ids: list[str] = list(self._utterances)
        self.skipped: collections.Counter = collections.Counter(skipped or {})

    def __repr__(self) -> str:
        return f"SpeechCorpus({len(self.client_ids)} clients, {self.num_utterances} utterances)"

    @property
    def num_utterances(self) -> int:
        """Utterances over all clients."""
        return sum(len(u) for u in self._utterances.values())

    def utterances(self, client_id: str) -> list[Utterance]:
        """The utterances of one speaker; ``KeyError`` for an unknown id."""
        return list(self._utterances[client_id])

    def all_utterances(self) -> list[Utterance]:
        """Every utterance, clients in ``client_ids`` order."""
        return [u for client_id in self.client_ids for u in self._utterances[client_id]]

    def filter_utterances(self, keep: Callable[[Utterance], bool]) -> "SpeechCorpus":
        """A new corpus view with the utterances ``keep`` accepts; emptied speakers are dropped."""
        kept = {cid: [u for u in utts if keep(u)] for cid, utts in self._utterances.items()}
        return SpeechCorpus(kept, self.skipped)

    def _dataset(self, utterances: Iterable[Utterance]) -> "tf.data.Dataset":
        import tensorflow as tf

        utterances = list(utterances)
        paths = tf.constant([u.audio_path for u in utterances], dtype=tf.string)
        transcripts = tf.constant([u.transcript for u in utterances], dtype=tf.string)
        dataset = tf.data.Dataset.from_tensor_slices({"path": paths, "transcript": transcripts})
        return dataset.map(
            lambda e: {"audio": _load_audio(e["path"]), "transcript": e["transcript"]},
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def create_tf_dataset_for_client(self, client_id: str) -> "tf.data.Dataset":
        """Elements ``{"audio": float32[None] in [-1, 1] at 16 kHz, "transcript": tf.string}``."""
        return self._dataset(self._utterances[client_id])

    def create_tf_dataset_for_clients(self, client_ids: Sequence[str]) -> "tf.data.Dataset":
        """Several clients' elements in one dataset, concatenated in the given order."""
        return self._dataset([u for c in client_ids for u in self._utterances[c]])

    def create_tf_dataset_from_all_clients(self) -> "tf.data.Dataset":
        """All clients' elements, concatenated in ``client_ids`` order."""
        return self._dataset(self.all_utterances())
