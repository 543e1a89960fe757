"""The ASR serving SavedModel: raw 16 kHz audio in, transcripts and CTC logits out.

Signatures (all with TF Serving's method ``tensorflow/serving/predict``, tag
``serve``):

``serving_default``
    ``audio`` float32[B, N] (waveform in [-1, 1] at the front end's sample
    rate, rows zero-padded to the longest) and ``audio_lengths`` int32[B]
    (valid samples per row) -> ``transcripts`` string[B] (greedy CTC),
    ``logits`` float32[B, T', V] and ``logit_lengths`` int32[B] (frames of
    ``logits`` that belong to each row; the rest is padding).
``features``
    ``features`` float32[B, T, F] normalized log-mel and ``feature_lengths``
    int32[B] -> the same three outputs, for clients with their own front end.
``utterance``
    ``audio`` float32[N], one utterance -> ``logits`` float32[1, T', V] and
    ``logit_lengths`` int32[1]. Built from TFLite builtin ops only (no
    ``tf.cond`` / ``EnsureShape``, no strings): what the ``.tflite`` is
    converted from. Needs at least one sample.

The log-mel front end is inside the graph and is the training front end
(`tasks.asr.features.log_mel_features`), made of core TensorFlow ops only
(tensorflow-io's spectrogram / melscale / dbscale are Python over
``tf.signal``), so TF Serving needs no custom ops. Each row of a batch is
featurized on its own ``audio_lengths[b]`` samples, exactly as in training
(per-utterance normalization), so padding never changes a transcript.

The ``.tflite`` has no string outputs: the app decodes the logits (greedy
CTC: argmax, collapse repeats, drop blank 0), as `TfliteRecognizer` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_io as tfio

from tasks.asr import ctc
from tasks.asr import features as features_lib
from tasks.asr import model as model_lib
from tff_prune.export import tflite as tflite_lib

SERVING_SIGNATURE = "serving_default"
FEATURES_SIGNATURE = "features"
UTTERANCE_SIGNATURE = "utterance"
SIGNATURES = (SERVING_SIGNATURE, FEATURES_SIGNATURE, UTTERANCE_SIGNATURE)
# The model's two valid 3x3 / stride-2 convs need at least 7 feature frames.
_MIN_FRAMES = 7


def batch_log_mel(audio: tf.Tensor, audio_lengths: tf.Tensor,
                  config: features_lib.FeatureConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """float32[B, N] padded audio + int32[B] lengths -> padded features, feature lengths.

    Row ``b`` gets ``log_mel_features(audio[b, :audio_lengths[b]])``, zero-padded
    to ``ceil(N / frame_step)`` frames (at least 7, the model's minimum).
    """
    audio = tf.convert_to_tensor(audio, tf.float32)
    audio_lengths = tf.convert_to_tensor(audio_lengths, tf.int32)
    num_samples = tf.shape(audio)[1]
    checks = [
        tf.debugging.assert_equal(tf.shape(audio_lengths)[0], tf.shape(audio)[0],
                                  message="audio_lengths must have one entry per audio row"),
        tf.debugging.assert_non_negative(audio_lengths, message="audio_lengths must be >= 0"),
        tf.debugging.assert_less_equal(audio_lengths, num_samples,
                                       message="audio_lengths exceeds the audio row length"),
    ]
    with tf.control_dependencies(checks):
        max_frames = tf.maximum((num_samples + config.frame_step - 1) // config.frame_step,
                                _MIN_FRAMES)

    def one(row):
        wav, length = row
        feats = features_lib.log_mel_features(wav[:length], config)
        return tf.pad(feats, [[0, max_frames - tf.shape(feats)[0]], [0, 0]])

    features = tf.map_fn(one, (audio, audio_lengths),
                         fn_output_signature=tf.TensorSpec([None, config.num_mel_bins], tf.float32))
    lengths = (audio_lengths + config.frame_step - 1) // config.frame_step
    return features, lengths


def utterance_log_mel(audio: tf.Tensor, config: features_lib.FeatureConfig) -> tf.Tensor:
    """float32[N] (N >= 1) -> float32[T, F]: `log_mel_features` without its cond.

    Same tensorflow-io calls and normalization as
    `tasks.asr.features.log_mel_features` (checked equal in the tests), minus
    the empty-audio ``tf.cond`` and ``ensure_shape``, which TFLite's builtin
    op set lacks.
    """
    spec = tfio.audio.spectrogram(audio, nfft=config.nfft, window=config.frame_length,
                                  stride=config.frame_step)
    mel = tfio.audio.melscale(spec, rate=config.sample_rate, mels=config.num_mel_bins,
                              fmin=config.fmin, fmax=config.fmax)
    logmel = tfio.audio.dbscale(mel, top_db=config.top_db)
    mean, variance = tf.nn.moments(logmel, axes=[0], keepdims=True)
    # pylint: disable=protected-access
    feats = (logmel - mean) * tf.math.rsqrt(variance + features_lib._NORM_EPSILON)
    return tf.reshape(feats, [-1, config.num_mel_bins])


def _outputs(infer, features: tf.Tensor, feature_lengths: tf.Tensor) -> dict:
    logits = infer(features, feature_lengths)
    logit_lengths = model_lib.output_lengths(feature_lengths)
    return {"transcripts": ctc.greedy_decode_tf(logits, logit_lengths),
            "logits": logits, "logit_lengths": logit_lengths}


def build_serving_module(model: tf.keras.Model, feature_config: features_lib.FeatureConfig
                         ) -> tuple[tf.Module, dict[str, Any]]:
    """A `tf.Module` to save and its signatures {name: tf.function}.

    Only the model's variables are tracked (not the Keras model itself), so
    saving writes the inference graph alone: no Keras training functions,
    and a fraction of the save time.
    """
    cfg = feature_config
    num_mels = cfg.num_mel_bins
    if model.input["features"].shape[-1] != num_mels:
        raise ValueError(f"model expects {model.input['features'].shape[-1]} mel bins, "
                         f"front end gives {num_mels}")
    module = tf.Module()
    module.model_variables = list(model.variables)

    # One traced function for the network, called by every signature, so the
    # SavedModel's graph holds the model once instead of once per signature.
    @tf.function(input_signature=[tf.TensorSpec([None, None, num_mels], tf.float32),
                                  tf.TensorSpec([None], tf.int32)])
    def infer(features, feature_lengths):
        return model({"features": features, "feature_lengths": feature_lengths}, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="audio"),
                                  tf.TensorSpec([None], tf.int32, name="audio_lengths")])
    def serve_audio(audio, audio_lengths):
        features, lengths = batch_log_mel(audio, audio_lengths, cfg)
        return _outputs(infer, features, lengths)

    @tf.function(input_signature=[tf.TensorSpec([None, None, num_mels], tf.float32, name="features"),
                                  tf.TensorSpec([None], tf.int32, name="feature_lengths")])
    def serve_features(features, feature_lengths):
        # The model needs >= 7 padded frames; shorter rows decode to "".
        pad = tf.maximum(_MIN_FRAMES - tf.shape(features)[1], 0)
        features = tf.pad(features, [[0, 0], [0, pad], [0, 0]])
        return _outputs(infer, features, feature_lengths)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="audio")])
    def serve_utterance(audio):
        features = utterance_log_mel(audio, cfg)
        lengths = tf.shape(features)[0:1]
        pad = tf.maximum(_MIN_FRAMES - tf.shape(features)[0], 0)
        features = tf.pad(features, [[0, pad], [0, 0]])[tf.newaxis]
        logits = infer(features, lengths)
        return {"logits": logits, "logit_lengths": model_lib.output_lengths(lengths)}

    module.infer = infer
    module.serve_audio, module.serve_features = serve_audio, serve_features
    module.serve_utterance = serve_utterance
    return module, {SERVING_SIGNATURE: serve_audio, FEATURES_SIGNATURE: serve_features,
                    UTTERANCE_SIGNATURE: serve_utterance}


def save_serving_model(model: tf.keras.Model, feature_config: features_lib.FeatureConfig,
                       path: str) -> list[str]:
    """Writes the serving SavedModel of ``model`` (a plain, stripped Keras model)
    to ``path``; returns its signature names."""
    module, signatures = build_serving_module(model, feature_config)
    tf.saved_model.save(module, path, signatures=signatures)
    return list(signatures)


def latency_request(signature: str = SERVING_SIGNATURE, seconds: float = 5.0, seed: int = 0,
                    config: features_lib.FeatureConfig = features_lib.FeatureConfig()
                    ) -> dict[str, tf.Tensor]:
    """Inputs of one batch-1 request of ``seconds`` of audio, for latency timing.

    ``serving_default``: random raw audio (the whole request: front end +
    model + greedy decoding); ``features``: the equivalent log-mel frames
    (the model and decoding alone).
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * config.sample_rate)
    if signature == SERVING_SIGNATURE:
        return {"audio": tf.constant(rng.uniform(-0.5, 0.5, (1, n)).astype(np.float32)),
                "audio_lengths": tf.constant([n], tf.int32)}
    if signature == FEATURES_SIGNATURE:
        frames = features_lib.num_feature_frames(n, config)
        return {"features": tf.constant(rng.standard_normal(
                    (1, frames, config.num_mel_bins)).astype(np.float32)),
                "feature_lengths": tf.constant([frames], tf.int32)}
    raise ValueError(f"cannot time signature {signature!r}")


class TfliteRecognizer:
    """Runs a converted ``.tflite`` (the ``utterance`` signature) with `tf.lite.Interpreter`."""

    def __init__(self, model_content: bytes, num_threads: int = 1):
        self.interpreter, self._runner = tflite_lib.signature_runner(
            model_content, UTTERANCE_SIGNATURE, num_threads)

    def logits(self, audio: np.ndarray) -> tuple[np.ndarray, int]:
        """float32[N] audio -> (logits float32[T', V], number of valid frames)."""
        out = self._runner(audio=np.asarray(audio, np.float32))
        return out["logits"][0], int(out["logit_lengths"][0])

    def transcribe(self, audio: np.ndarray) -> str:
        """Greedy CTC transcript of one utterance."""
        logits, length = self.logits(audio)
        return ctc.greedy_decode(logits[np.newaxis], np.array([length], np.int32))[0]
