"""TFLite conversion of an exported SavedModel signature, and running the ``.tflite``.

The ``.tflite`` is converted from one signature of the export (the task's
`TaskExport.tflite_signature`, e.g. ASR's ``utterance``: raw audio -> CTC
logits, front end included), with TFLite builtin ops only. For unstructured
and block sparsity, ``Optimize.EXPERIMENTAL_SPARSITY`` lets the converter
store sparse kernels in TFLite's sparse format where that is smaller.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf


def convert(saved_model_dir: str, signature: str, sparsity: bool = False) -> bytes:
    """The ``signature`` of ``saved_model_dir`` as a TFLite flatbuffer.

    ``sparsity=True`` adds ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY`` (float
    weights kept, sparse encoding where the converter finds it pays).
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=[signature])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if sparsity:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    return converter.convert()


def signature_runner(model_content: bytes, signature: str, num_threads: int = 1
                     ) -> tuple[tf.lite.Interpreter, Callable[..., dict]]:
    """A `tf.lite.Interpreter` of ``model_content`` and its ``signature`` runner."""
    interpreter = tf.lite.Interpreter(model_content=model_content, num_threads=num_threads)
    return interpreter, interpreter.get_signature_runner(signature)
