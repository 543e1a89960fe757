"""Character vocabulary for CTC speech recognition.

Index 0 is the CTC blank (use ``blank_index=0`` everywhere), then space,
``a``-``z`` and the apostrophe: 29 classes in all.

Normalization (identical in Python and TF):
  1. lower-case,
  2. ASCII whitespace (space, \\t, \\n, \\r, \\f, \\v) -> space,
  3. drop every character outside the vocabulary,
  4. collapse runs of spaces, strip both ends.
Whitespace is deliberately ASCII-only so that the Python and the RE2 (TF)
implementations agree exactly; other Unicode spaces are simply dropped.
"""

from __future__ import annotations

import collections
import re
from typing import Iterable

import tensorflow as tf

BLANK = "<blank>"
BLANK_ID = 0
CHARACTERS: tuple[str, ...] = (" ",) + tuple("abcdefghijklmnopqrstuvwxyz") + ("'",)
VOCAB: tuple[str, ...] = (BLANK,) + CHARACTERS
VOCAB_SIZE = len(VOCAB)  # 29

_CHAR_TO_ID = {c: i for i, c in enumerate(VOCAB) if i != BLANK_ID}

# One regex set used by both implementations (Python `re` and TF's RE2).
_ASCII_WS = r"[ \t\n\r\f\v]+"
_OUT_OF_VOCAB = r"[^a-z' ]"


def normalize_transcript(text: str) -> str:
    """Lower-case, map whitespace to spaces, drop out-of-vocabulary chars, collapse spaces."""
    text = text.lower()
    text = re.sub(_ASCII_WS, " ", text)
    text = re.sub(_OUT_OF_VOCAB, "", text)
    return re.sub(" +", " ", text).strip(" ")


def dropped_characters(text: str) -> collections.Counter:
    """The characters :func:`normalize_transcript` drops from ``text``, with counts."""
    text = re.sub(_ASCII_WS, " ", text.lower())
    return collections.Counter(re.findall(_OUT_OF_VOCAB, text))


def describe_dropped(transcripts: Iterable[str]) -> tuple[collections.Counter, int, str]:
    """(dropped-character counts, transcripts affected, one-line summary) over ``transcripts``."""
    total: collections.Counter = collections.Counter()
    affected = 0
    for transcript in transcripts:
        dropped = dropped_characters(transcript)
        affected += bool(dropped)
        total += dropped
    by_count = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))
    summary = (f"dropped {sum(total.values())} out-of-vocabulary characters in {affected}"
               " transcripts: " + ", ".join(f"{c!r} x{n}" for c, n in by_count))
    return total, affected, summary


def encode(text: str, normalize: bool = True) -> list[int]:
    """Map a transcript to label ids (never contains the blank).

    With ``normalize=False`` the text must already be normalized; an
    out-of-vocabulary character then raises ``ValueError``.
    """
    if normalize:
        text = normalize_transcript(text)
    try:
        return [_CHAR_TO_ID[c] for c in text]
    except KeyError as e:
        raise ValueError(f"character {e.args[0]!r} is not in the vocabulary") from None


def decode(ids: Iterable[int]) -> str:
    """Map label ids back to text; blanks (id 0) are skipped, nothing is collapsed."""
    out = []
    for i in ids:
        i = int(i)
        if not 0 <= i < VOCAB_SIZE:
            raise ValueError(f"label id {i} outside [0, {VOCAB_SIZE})")
        if i != BLANK_ID:
            out.append(VOCAB[i])
    return "".join(out)


# ----------------------------------------------------------------------------- TF side


def normalize_transcript_tf(text: tf.Tensor) -> tf.Tensor:
    """Graph-mode twin of :func:`normalize_transcript` (any shape of tf.string)."""
    text = tf.strings.lower(text, encoding="utf-8")
    text = tf.strings.regex_replace(text, _ASCII_WS, " ")
    text = tf.strings.regex_replace(text, _OUT_OF_VOCAB, "")
    text = tf.strings.regex_replace(text, " +", " ")
    return tf.strings.regex_replace(text, "^ +| +$", "")


def _lookup_table() -> tf.lookup.StaticHashTable:
    # Built per call rather than at import: a module-level table would be
    # captured by whichever graph first touched it (tf.data / tff.tf_computation
    # each trace their own graph), which breaks reuse across graphs.
    keys = tf.constant(list(CHARACTERS))
    values = tf.constant(list(range(1, VOCAB_SIZE)), dtype=tf.int32)
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, values), default_value=-1
    )


def encode_tf(text: tf.Tensor) -> tf.Tensor:
    """Encode a scalar tf.string to int32[None] label ids (normalizes first).

    Works inside ``tf.data.Dataset.map``. After normalization only ASCII
    vocabulary characters remain, so splitting into bytes is exact.
    """
    text = normalize_transcript_tf(tf.convert_to_tensor(text, tf.string))
    chars = tf.strings.bytes_split(text)
    return _lookup_table().lookup(chars)


def decode_tf(ids: tf.Tensor | tf.RaggedTensor) -> tf.Tensor:
    """Join label ids (last axis; dense or ragged) into strings; blanks map to ''.

    E.g. int32[B, None] ragged -> tf.string[B]. No CTC collapsing is done.
    """
    table = tf.constant([""] + list(CHARACTERS))
    return tf.strings.reduce_join(tf.gather(table, ids), axis=-1)
