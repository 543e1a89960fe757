"""TFLite: the exported model's `.tflite` (and its sparse variant) agrees with the SavedModel."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tasks.asr import features as features_lib
from tasks.asr import librispeech
from tasks.asr import model as model_lib
from tasks.asr import serve_client
from tasks.asr import serving
from tasks.asr import text
from tasks.asr.export import AsrExport
from tff_prune.export import masking
from tff_prune.export import pipeline

CFG = model_lib.ConformerConfig.tiny(dropout=0.0)


@pytest.fixture(scope="module")
def audio(tiny_corpus_dir):
    corpus = librispeech.load_librispeech(os.path.join(tiny_corpus_dir, "test"))
    return [serve_client.read_audio(u.audio_path) for u in corpus.all_utterances()[:4]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An unstructured-80% tiny model, exported with dense and sparse TFLite files."""
    tf.keras.utils.set_random_seed(0)
    model = model_lib.build_conformer_ctc(CFG, text.VOCAB_SIZE)
    masking.randomize_non_kernel_weights(model, seed=2)
    masking.apply_magnitude_masks(model, "unstructured", 0.8)
    result = pipeline.export_model(model, AsrExport(CFG, features_lib.FeatureConfig()),
                                   str(tmp_path_factory.mktemp("serving")), "asr",
                                   tflite=True, tflite_sparsity=True)
    with open(os.path.join(result.path, pipeline.TFLITE_FILE), "rb") as f:
        dense = f.read()
    with open(os.path.join(result.path, pipeline.TFLITE_SPARSE_FILE), "rb") as f:
        sparse = f.read()
    return result, dense, sparse


def test_tflite_front_end_equals_the_training_front_end(audio):
    for a in audio:
        np.testing.assert_array_equal(serving.utterance_log_mel(a, features_lib.FeatureConfig()),
                                      features_lib.log_mel_features(a))


@pytest.mark.parametrize("variant", ["dense", "sparse"])
def test_tflite_agrees_with_the_saved_model(exported, audio, variant):
    result, dense, sparse = exported
    recognizer = serving.TfliteRecognizer(dense if variant == "dense" else sparse)
    serve = tf.saved_model.load(result.path).signatures["serving_default"]
    texts = []
    for a in audio:  # one utterance at a time: the interpreter resizes its input
        ref = serve(audio=tf.constant(a[np.newaxis]), audio_lengths=tf.constant([len(a)]))
        logits, n = recognizer.logits(a)
        assert n == int(ref["logit_lengths"][0])
        np.testing.assert_allclose(logits[:n], ref["logits"].numpy()[0, :n], atol=1e-4)
        texts.append(recognizer.transcribe(a))
        assert texts[-1] == ref["transcripts"].numpy()[0].decode("utf-8")
    assert any(texts)


def test_tflite_uses_builtin_ops_only_and_sparsity_pays_off(exported):
    result, dense, sparse = exported
    assert result.tflite_bytes == len(dense) and result.tflite_sparse_bytes == len(sparse)
    # 80% zeros in the pruned kernels: the sparse encoding is far smaller.
    assert len(sparse) < 0.6 * len(dense)
    # The converter was restricted to TFLITE_BUILTINS: no Flex (TF) ops inside.
    assert b"Flex" not in dense and b"Flex" not in sparse
