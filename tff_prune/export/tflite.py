"""TFLite conversion of an exported model, and running the ``.tflite``.

The ``.tflite`` is converted from the export's ``utterance`` signature (one
utterance of raw audio -> CTC logits, front end included), with TFLite
builtin ops only. String outputs do not exist there: the app decodes the
logits (greedy CTC: argmax, collapse repeats, drop blank 0), as
:func:`transcribe` does. For unstructured and block sparsity,
``Optimize.EXPERIMENTAL_SPARSITY`` lets the converter store sparse kernels in
TFLite's sparse format where that is smaller.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tasks.asr import ctc
from tff_prune.export import savedmodel


def convert(saved_model_dir: str, sparsity: bool = False) -> bytes:
    """The ``utterance`` signature of ``saved_model_dir`` as a TFLite flatbuffer.

    ``sparsity=True`` adds ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY`` (float
    weights kept, sparse encoding where the converter finds it pays).
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=[savedmodel.UTTERANCE_SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if sparsity:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    return converter.convert()


class TfliteRecognizer:
    """Runs a converted ``.tflite`` with `tf.lite.Interpreter`."""

    def __init__(self, model_content: bytes, num_threads: int = 1):
        self.interpreter = tf.lite.Interpreter(model_content=model_content,
                                               num_threads=num_threads)
        self._runner = self.interpreter.get_signature_runner(savedmodel.UTTERANCE_SIGNATURE)

    def logits(self, audio: np.ndarray) -> tuple[np.ndarray, int]:
        """float32[N] audio -> (logits float32[T', V], number of valid frames)."""
        out = self._runner(audio=np.asarray(audio, np.float32))
        return out["logits"][0], int(out["logit_lengths"][0])

    def transcribe(self, audio: np.ndarray) -> str:
        """Greedy CTC transcript of one utterance."""
        logits, length = self.logits(audio)
        return ctc.greedy_decode(logits[np.newaxis], np.array([length], np.int32))[0]
