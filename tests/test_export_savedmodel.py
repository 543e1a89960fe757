"""The serving export of a saved run: layout, signatures, saved_model_cli, clients, TF Serving.

One module fixture saves a structured-50% tiny model as a finished run would
(`final_model.save_final_model` + summary.json), exports it with the real CLI
(`python -m tff_prune.export`, compacted: version 1), then exports the masked
model in-process (version 2). Everything is checked on real FLAC utterances.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from conftest import shell_env
from tasks.asr import ctc
from tasks.asr import features as features_lib
from tasks.asr import librispeech
from tasks.asr import model as model_lib
from tasks.asr import serve_client
from tasks.asr import serving
from tasks.asr import spec as asr_spec
from tasks.asr import task as task_lib
from tasks.asr import text
from tasks.asr import units
from tasks.asr.export import AsrExport
from tff_prune.export import masking
from tff_prune.export import pipeline
from tff_prune.export import savedmodel
from tff_prune.model import wrappers
from tff_prune.program import experiment_config
from tff_prune.program import final_model
from tff_prune.pruning import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = model_lib.ConformerConfig.tiny(dropout=0.0)
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


def _tree_digest(path):
    digest = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                digest[os.path.relpath(full, path)] = (hashlib.sha256(f.read()).hexdigest(),
                                                       os.stat(full).st_mtime_ns)
    return digest


def _save_as_run(model, out_dir, corpus_dir):
    """Writes final_model/ and summary.json exactly as a structured run does."""
    corpus = librispeech.load_librispeech(os.path.join(corpus_dir, "test"))
    task = task_lib.AsrTask(corpus, corpus, task_lib.AsrTaskConfig(model_size="tiny",
                                                                   dropout=0.0))
    config = experiment_config.ExperimentConfig(
        root_output_dir=os.path.dirname(out_dir), experiment_name=os.path.basename(out_dir),
        task_name="asr", task=asr_spec.AsrConfig(model=task.config),
        pruning=config_lib.PruningConfig(scheme="structured", structure="column"))
    os.makedirs(out_dir)
    wrapped = wrappers.wrap_for_pruning(model, wrappers.select_prunable_layers(model))
    for layer in model.layers:
        if layer.weights:
            names = {l.name for l in wrapped.layers}
            target = (wrapped.get_layer(layer.name) if layer.name in names
                      else wrapped.get_layer(f"prune_low_magnitude_{layer.name}").layer)
            target.set_weights(layer.get_weights())
    weights = tff.learning.models.ModelWeights.from_model(wrapped)
    final_model.save_final_model(wrapped, weights, out_dir, task, wrapped=True)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump({"config": experiment_config.jsonable(dataclasses.asdict(config))}, f)


@pytest.fixture(scope="module")
def utterances(tiny_corpus_dir):
    """(audio read by the client, audio read by training, reference) for held-out files."""
    corpus = librispeech.load_librispeech(os.path.join(tiny_corpus_dir, "test"))
    utts = corpus.all_utterances()[:4]
    training_audio = [e["audio"].numpy() for e in corpus.create_tf_dataset_from_all_clients().take(4)]
    return utts, [serve_client.read_audio(u.audio_path) for u in utts], training_audio


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_corpus_dir):
    tmp = tmp_path_factory.mktemp("export")
    tf.keras.utils.set_random_seed(0)
    masked = model_lib.build_conformer_ctc(CFG, text.VOCAB_SIZE)
    masking.randomize_non_kernel_weights(masked, seed=1)
    masking.apply_magnitude_masks(masked, "structured", 0.5, "column",
                                  units.ConformerStructure(CFG.num_heads))
    run_dir = str(tmp / "experiments" / "structured_column_s50")
    _save_as_run(masked, run_dir, tiny_corpus_dir)
    base = str(tmp / "serving")
    env = shell_env(PYTHONPATH=ROOT)
    cli = subprocess.run(
        [sys.executable, "-m", "tff_prune.export", f"--checkpoint={run_dir}",
         f"--export_dir={base}", "--model_name=asr", "--train_tflite=false"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    v1 = os.path.join(base, "asr", "1")
    before = _tree_digest(v1)
    second = pipeline.export_model(masked, AsrExport(CFG, features_lib.FeatureConfig()), base,
                                   "asr", compact=False, tflite=False)
    return {"masked": masked, "base": base, "v1": v1, "v2": second.path, "second": second,
            "cli_stdout": cli.stdout, "v1_before": before, "tmp": tmp}


def _reference(model, audio):
    """In-process decoding: training front end, Keras model, greedy CTC."""
    feats = features_lib.log_mel_features(audio)[tf.newaxis]
    lengths = tf.shape(feats)[1:2]
    logits = model({"features": feats, "feature_lengths": lengths}, training=False)
    return ctc.greedy_decode(logits, model_lib.output_lengths(lengths))[0], logits.numpy()[0]


# ----------------------------------------------------------------------------- layout


def test_two_exports_are_versions_1_and_2_and_the_first_is_untouched(exported):
    model_dir = os.path.join(exported["base"], "asr")
    assert sorted(os.listdir(model_dir)) == [".export.lock", "1", "2"]  # no temporaries left
    assert exported["second"].version == 2
    assert _tree_digest(exported["v1"]) == exported["v1_before"]
    for version in ("1", "2"):
        path = os.path.join(model_dir, version)
        assert os.path.isfile(os.path.join(path, "saved_model.pb"))
        assert os.path.isfile(os.path.join(path, "variables", "variables.index"))
    assert "exported version 1 to" in exported["cli_stdout"]
    # The CLI compacted the structured run (auto) and says so in the export's metadata.
    with open(os.path.join(exported["v1"], savedmodel.METADATA_FILE)) as f:
        meta = json.load(f)
    compact = meta["export"]["compaction"]
    assert compact["compact_params"] < compact["dense_params"]
    assert meta["export"]["max_logit_difference"] < 1e-4
    assert meta["pruning"]["scheme"] == "structured"
    assert os.path.getsize(os.path.join(exported["v1"], pipeline.TFLITE_FILE)) > 0
    # --train_tflite=false: no on-device training artifact (test_cli checks one).
    assert not os.path.exists(os.path.join(exported["v1"], "assets.extra", "train.tflite"))
    assert meta["export"]["train_tflite_bytes"] is None


def test_graph_has_only_core_tensorflow_ops(exported):
    from tensorflow.python.framework import op_def_registry  # pylint: disable=import-outside-toplevel
    ops = savedmodel.graph_op_types(exported["v1"])
    assert "RFFT" in ops  # the front end is in the graph
    # TF Serving has no tensorflow-io kernels: nothing custom may be in there.
    assert not [op for op in ops if op.startswith("IO>")]
    assert not [op for op in ops if op_def_registry.get(op) is None]


# ----------------------------------------------------------------------------- saved_model_cli


def _parse_show_all(output):
    signatures = {}
    for chunk in output.split("signature_def['")[1:]:
        name = chunk.split("']", 1)[0]
        tensors = re.findall(r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+"
                             r"shape: (\([^)]*\)|unknown_rank)", chunk)
        method = re.search(r"Method name is: (\S*)", chunk)
        signatures[name] = {
            "inputs": {n: (d, s) for kind, n, d, s in tensors if kind == "inputs"},
            "outputs": {n: (d, s) for kind, n, d, s in tensors if kind == "outputs"},
            "method": method.group(1) if method else None}
    return signatures


def test_saved_model_cli_show_signatures(exported):
    out = subprocess.run([SAVED_MODEL_CLI, "show", "--dir", exported["v1"], "--all"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "MetaGraphDef with tag-set: 'serve'" in out
    sigs = _parse_show_all(out)
    predict = "tensorflow/serving/predict"
    outputs = {"transcripts": ("DT_STRING", "(-1)"), "logits": ("DT_FLOAT", "(-1, -1, 29)"),
               "logit_lengths": ("DT_INT32", "(-1)")}
    assert sigs["serving_default"] == {
        "inputs": {"audio": ("DT_FLOAT", "(-1, -1)"), "audio_lengths": ("DT_INT32", "(-1)")},
        "outputs": outputs, "method": predict}
    assert sigs["features"] == {
        "inputs": {"features": ("DT_FLOAT", "(-1, -1, 80)"),
                   "feature_lengths": ("DT_INT32", "(-1)")},
        "outputs": outputs, "method": predict}
    assert sigs["utterance"]["inputs"] == {"audio": ("DT_FLOAT", "(-1)")}
    assert sigs["utterance"]["method"] == predict


def test_rest_body_from_real_audio_through_saved_model_cli_run(exported, utterances, tmp_path):
    utts, client_audio, _ = utterances
    body = serve_client.rest_request_body(client_audio[:2])
    # What TF Serving does with row format: stack each named input over instances.
    json_body = json.loads(json.dumps(body))
    audio = np.array([inst["audio"] for inst in json_body["instances"]], np.float32)
    lengths = np.array([inst["audio_lengths"] for inst in json_body["instances"]], np.int32)
    assert lengths.tolist() == [len(a) for a in client_audio[:2]]
    np.save(tmp_path / "audio.npy", audio)
    np.save(tmp_path / "lengths.npy", lengths)
    subprocess.run(
        [SAVED_MODEL_CLI, "run", "--dir", exported["v1"], "--tag_set", "serve",
         "--signature_def", json_body["signature_name"],
         "--inputs", f"audio={tmp_path / 'audio.npy'};audio_lengths={tmp_path / 'lengths.npy'}",
         "--outdir", str(tmp_path / "out"), "--overwrite"],
        capture_output=True, text=True, timeout=300, check=True)
    transcripts = np.load(tmp_path / "out" / "transcripts.npy", allow_pickle=True)
    expected = [_reference(exported["masked"], a)[0] for a in client_audio[:2]]
    assert [t.decode("utf-8") for t in transcripts] == expected
    assert any(expected)  # a meaningful comparison: not all empty
    logit_lengths = np.load(tmp_path / "out" / "logit_lengths.npy")
    assert logit_lengths.tolist() == [
        model_lib.output_lengths(features_lib.num_feature_frames(len(a))) for a in client_audio[:2]]


# ----------------------------------------------------------------------------- in-process


def test_client_reads_the_samples_training_read(utterances):
    _, client_audio, training_audio = utterances
    for a, b in zip(client_audio, training_audio):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_waveform_to_transcript_equals_in_process_decoding(exported, utterances, version):
    _, client_audio, _ = utterances
    serve = tf.saved_model.load(exported[version]).signatures["serving_default"]
    batch, lengths = serve_client.batch_audio(client_audio)  # padded, unequal lengths
    out = serve(audio=tf.constant(batch), audio_lengths=tf.constant(lengths))
    for i, audio in enumerate(client_audio):
        text_ref, logits_ref = _reference(exported["masked"], audio)
        assert out["transcripts"].numpy()[i].decode("utf-8") == text_ref
        n = int(out["logit_lengths"][i])
        assert n == logits_ref.shape[0]
        np.testing.assert_allclose(out["logits"].numpy()[i, :n], logits_ref, atol=1e-4)


def test_compacted_tflite_logits_equal_the_masked_keras_model(exported, utterances):
    # Version 1 is the compacted export: its TFLite file must compute what the
    # masked (uncompacted) Keras model computes, frame by frame.
    with open(os.path.join(exported["v1"], pipeline.TFLITE_FILE), "rb") as f:
        recognizer = serving.TfliteRecognizer(f.read())
    _, client_audio, _ = utterances
    for audio in client_audio[:2]:
        text_ref, logits_ref = _reference(exported["masked"], audio)
        logits, n = recognizer.logits(audio)
        assert n == logits_ref.shape[0]
        np.testing.assert_allclose(logits[:n], logits_ref, atol=1e-4)
        assert recognizer.transcribe(audio) == text_ref


def test_features_signature_matches(exported, utterances):
    _, client_audio, _ = utterances
    serve = tf.saved_model.load(exported["v1"]).signatures["features"]
    feats = features_lib.log_mel_features(client_audio[0])[tf.newaxis]
    out = serve(features=feats, feature_lengths=tf.shape(feats)[1:2])
    assert out["transcripts"].numpy()[0].decode("utf-8") == _reference(
        exported["masked"], client_audio[0])[0]


def test_grpc_request_from_real_audio_is_accepted(exported, utterances):
    _, client_audio, _ = utterances
    request = serve_client.grpc_request("asr", client_audio[1:3])
    assert request.model_spec.signature_name == "serving_default"
    audio = tf.make_ndarray(request.inputs["audio"])
    lengths = tf.make_ndarray(request.inputs["audio_lengths"])
    rest = serve_client.rest_request_body(client_audio[1:3])
    np.testing.assert_array_equal(audio, np.array([i["audio"] for i in rest["instances"]], np.float32))
    serve = tf.saved_model.load(exported["v1"]).signatures[request.model_spec.signature_name]
    out = serve(audio=tf.constant(audio), audio_lengths=tf.constant(lengths))
    assert [t.decode("utf-8") for t in out["transcripts"].numpy()] == [
        _reference(exported["masked"], a)[0] for a in client_audio[1:3]]


def test_bad_lengths_are_rejected(exported):
    serve = tf.saved_model.load(exported["v1"]).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="audio_lengths"):
        serve(audio=tf.zeros([1, 1600]), audio_lengths=tf.constant([1601]))
    # Empty and very short rows decode to "" instead of failing.
    out = serve(audio=tf.zeros([2, 500]), audio_lengths=tf.constant([0, 500]))
    assert out["transcripts"].numpy().tolist() == [b"", b""]


def test_client_cli_reports_an_unreachable_server_in_one_line(utterances, capsys):
    import portpicker  # pylint: disable=import-outside-toplevel
    utts, _, _ = utterances
    port = portpicker.pick_unused_port()  # nothing listens there
    status = serve_client.main([f"--audio={utts[0].audio_path}", "--protocol=both",
                                f"--rest_url=http://127.0.0.1:{port}",
                                f"--grpc_target=127.0.0.1:{port}", "--timeout=5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(err) == 2 and err[0].startswith("rest: error: ")
    assert err[1].startswith("grpc: error: UNAVAILABLE")
    assert serve_client.main(["--audio=/nonexistent.flac"]) == 2


# ----------------------------------------------------------------------------- real TF Serving


def test_real_tensorflow_model_server(exported, utterances, tmp_path):
    binary = shutil.which("tensorflow_model_server")
    if binary is None:
        pytest.skip("tensorflow_model_server is not on PATH: TF Serving ships it only in its "
                    "Docker image and Google's apt repository (see docs/serving.md)")
    import portpicker  # pylint: disable=import-outside-toplevel
    grpc_port, rest_port = portpicker.pick_unused_port(), portpicker.pick_unused_port()
    # Serve every version (the default policy serves only the latest).
    config = tmp_path / "models.config"
    config.write_text(
        'model_config_list { config { name: "asr" '
        f'base_path: "{os.path.join(exported["base"], "asr")}" model_platform: "tensorflow" '
        "model_version_policy { all {} } } }\n")
    log = open(tmp_path / "model_server.log", "w")
    server = subprocess.Popen(
        [binary, f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         f"--model_config_file={config}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        rest_url = f"http://127.0.0.1:{rest_port}"
        for version in (1, 2):
            serve_client.wait_until_available(rest_url, "asr", timeout=120, version=version)
        _, client_audio, _ = utterances
        expected = [_reference(exported["masked"], a)[0] for a in client_audio]
        assert serve_client.rest_predict(rest_url, "asr", client_audio) == expected
        assert serve_client.grpc_predict(f"127.0.0.1:{grpc_port}", "asr", client_audio) == expected
        # The compacted version 1 gives the same transcripts.
        assert serve_client.rest_predict(rest_url, "asr", client_audio, version=1) == expected
        assert serve_client.grpc_predict(f"127.0.0.1:{grpc_port}", "asr", client_audio,
                                         version=1) == expected
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
