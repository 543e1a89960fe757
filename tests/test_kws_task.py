"""The keyword-spotting task: corpus, loader, data, structure, compaction, a
federated run through the real TFF runtime, and the serving export."""

import hashlib
import json
import os
import types
import wave

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_model_optimization as tfmot

from conftest import computation_op_types, loop_dataset_options
from tasks.kws import compaction
from tasks.kws import corpus as corpus_lib
from tasks.kws import export as export_lib
from tasks.kws import features as features_lib
from tasks.kws import model as model_lib
from tasks.kws import spec as spec_lib
from tasks.kws import synthetic
from tasks.kws import task as task_lib
from tasks.kws import units
from tasks.kws.corpus import CLASS_NAMES, CLIP_SAMPLES, KwsCorpusError
from tff_prune.export import masking
from tff_prune.export import on_device
from tff_prune.federated import federated_eval
from tff_prune.federated import process as process_lib
from tff_prune.model import evaluation
from tff_prune.model import local_step
from tff_prune.model import wrappers
from tff_prune.program import registry
from tff_prune.pruning import config as config_lib
from tff_prune.pruning import schedule as schedule_lib
from tff_prune.pruning import structures

TINY = {"num_train_speakers": 4, "num_test_speakers": 2, "clips_per_speaker": 12,
        "dirichlet_alpha": 1.0, "seed": 0}
TINY_MODEL = model_lib.DsCnnConfig.preset("tiny", dropout=0.0)


@pytest.fixture(scope="module")
def kws_root(tmp_path_factory) -> str:
    """The tiny synthetic corpus (4 + 2 speakers x 12 clips), generated in-process."""
    root = tmp_path_factory.mktemp("kws") / "corpus"
    return synthetic.generate_corpus(str(root), num_workers=1, **TINY)


@pytest.fixture(scope="module")
def kws_task(kws_root) -> task_lib.KwsTask:
    train, test = corpus_lib.load_speech_commands(kws_root, num_test_speakers=2)
    return task_lib.KwsTask(train, test, task_lib.KwsTaskConfig(
        model_size="tiny", dropout=0.0, batch_size=8))


def _hashes(root: str) -> dict[str, str]:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _write_wav(path, samples, rate=16000, width=2):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, f"<i{width}").tobytes())


# ----------------------------------------------------------------------------- corpus


def test_synthetic_corpus_is_speech_commands_layout_with_disjoint_speakers(kws_root):
    with open(os.path.join(kws_root, synthetic.MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    assert manifest["params"] == synthetic.corpus_params(**TINY)
    speakers = {s["speaker_id"]: s for s in manifest["speakers"]}
    test_speakers = {k for k, s in speakers.items() if s["split"] == "test"}
    assert len(speakers) == 6 and len(test_speakers) == 2
    # Non-IID: each speaker its own voice and its own class frequencies.
    assert len({(s["accent"], s["variant"], s["pitch"], s["rate"])
                for s in speakers.values()}) == 6
    assert len({tuple(s["class_counts"].values()) for s in speakers.values()}) == 6
    with open(os.path.join(kws_root, corpus_lib.TESTING_LIST), encoding="utf-8") as f:
        listed = f.read().split()
    assert {name.split("/")[1].split("_nohash_")[0] for name in listed} == test_speakers
    assert len(listed) == 2 * TINY["clips_per_speaker"]
    for name in listed:
        with wave.open(os.path.join(kws_root, name)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth(),
                    w.getnframes()) == (16000, 1, 2, CLIP_SAMPLES)
    train, test = corpus_lib.load_speech_commands(kws_root, num_test_speakers=2)
    assert set(test.client_ids) == test_speakers
    assert not set(train.client_ids) & test_speakers
    assert train.num_clips == 4 * TINY["clips_per_speaker"]


def test_rerun_is_byte_identical_for_any_worker_count_and_the_cache_is_reused(
        kws_root, tmp_path):
    again = synthetic.generate_corpus(str(tmp_path / "again"), num_workers=2, **TINY)
    assert _hashes(again) == _hashes(kws_root)
    cached = synthetic.ensure_corpus(str(tmp_path / "cache"), num_workers=1, **TINY)
    assert _hashes(cached) == _hashes(kws_root)
    stamp = os.path.getmtime(os.path.join(cached, synthetic.MANIFEST))
    assert synthetic.ensure_corpus(str(tmp_path / "cache"), **TINY) == cached
    assert os.path.getmtime(os.path.join(cached, synthetic.MANIFEST)) == stamp


def _speech_commands_folder(root):
    """yes (2 speakers, one clip short), an unknown word and 2.5 s of background noise."""
    rng = np.random.default_rng(0)
    _write_wav(root / "yes" / "aaaa1111_nohash_0.wav", rng.integers(-900, 900, CLIP_SAMPLES))
    _write_wav(root / "yes" / "bbbb2222_nohash_0.wav", rng.integers(-900, 900, 12000))
    _write_wav(root / "cat" / "aaaa1111_nohash_0.wav", rng.integers(-900, 900, CLIP_SAMPLES))
    _write_wav(root / "stop" / "bbbb2222_nohash_1.wav", rng.integers(-900, 900, CLIP_SAMPLES))
    _write_wav(root / "_background_noise_" / "hum.wav", rng.integers(-500, 500, 40000))
    (root / "_background_noise_" / "README.md").write_text("noise")


def test_any_speech_commands_folder_loads_into_speakers(tmp_path):
    _speech_commands_folder(tmp_path)
    (tmp_path / "testing_list.txt").write_text("yes/bbbb2222_nohash_0.wav\n"
                                               "stop/bbbb2222_nohash_1.wav\n")
    train, test = corpus_lib.load_speech_commands(str(tmp_path), num_test_speakers=1)
    assert (train.client_ids, test.client_ids) == (["aaaa1111"], ["bbbb2222"])
    clips = train.clips("aaaa1111") + test.clips("bbbb2222")
    labels = sorted(CLASS_NAMES[c.label] for c in clips)
    # 40000 samples of noise: two whole 1-s silence pieces, dealt to the speakers.
    assert labels == sorted(["unknown", "yes", "yes", "stop", "silence", "silence"])
    pieces = [c for c in clips if CLASS_NAMES[c.label] == "silence"]
    assert sorted(c.start for c in pieces) == [0, CLIP_SAMPLES]
    audio = corpus_lib.read_clips(test.clips("bbbb2222"))
    assert audio.shape[1] == CLIP_SAMPLES and audio.dtype == np.float32
    (short,) = [i for i, c in enumerate(test.clips("bbbb2222"))
                if c.path.endswith(os.path.join("yes", "bbbb2222_nohash_0.wav"))]
    assert np.all(audio[short, 12000:] == 0) and np.any(audio[short, :12000] != 0)
    # Without a testing list, speakers are held out by seed.
    os.remove(tmp_path / "testing_list.txt")
    train, test = corpus_lib.load_speech_commands(str(tmp_path), num_test_speakers=1, seed=3)
    assert len(train.client_ids) == len(test.client_ids) == 1
    with pytest.raises(KwsCorpusError, match="cannot hold out 2 test speakers"):
        corpus_lib.load_speech_commands(str(tmp_path), num_test_speakers=2)


def test_bad_wav_files_are_one_clear_error_or_skipped_and_counted(tmp_path):
    _speech_commands_folder(tmp_path)
    (tmp_path / "no").mkdir()
    (tmp_path / "no" / "cccc3333_nohash_0.wav").write_bytes(b"RIFF\x00\x00garbage")
    _write_wav(tmp_path / "go" / "cccc3333_nohash_0.wav", np.zeros(8000), rate=8000)
    with pytest.raises(KwsCorpusError) as error:
        corpus_lib.load_speech_commands(str(tmp_path), num_test_speakers=1, strict=True)
    message = str(error.value)
    assert "\n" not in message and "go/cccc3333_nohash_0.wav" in message
    assert corpus_lib.WRONG_FORMAT in message
    train, test = corpus_lib.load_speech_commands(str(tmp_path), num_test_speakers=1)
    assert train.skipped == {corpus_lib.UNREADABLE_WAV: 1, corpus_lib.WRONG_FORMAT: 1}
    assert "cccc3333" not in train.client_ids + test.client_ids
    with pytest.raises(KwsCorpusError, match="does not exist"):
        corpus_lib.load_speech_commands(str(tmp_path / "missing"), num_test_speakers=1)


# ----------------------------------------------------------------------------- data


def test_client_datasets_hold_the_clips_features_and_labels(kws_task):
    client = kws_task.test_client_ids[0]
    clips = kws_task.test_corpus.clips(client)
    batches = list(kws_task.client_dataset(client, training=False))
    assert all(x.shape[1:] == (100, 40) and x.shape[0] <= 8 for x, _ in batches)
    labels = np.concatenate([y.numpy() for _, y in batches])
    np.testing.assert_array_equal(labels, [c.label for c in clips])
    tf.nest.assert_same_structure(batches[0], kws_task.batch_spec)
    assert kws_task.batch_spec[0].is_compatible_with(batches[0][0])
    # The features are the serving front end's on the same audio.
    audio = corpus_lib.read_clips(clips[:3])
    np.testing.assert_allclose(batches[0][0][:3].numpy(), features_lib.clip_features(
        features_lib.fix_length(audio), kws_task.config.feature).numpy(), atol=1e-5)
    # Training data: seeded shuffle (and SpecAugment), repeatable.
    train_client = kws_task.train_client_ids[0]

    def labels_of(seed):
        data = kws_task.client_dataset(train_client, training=True, seed=seed)
        return np.concatenate([y.numpy() for _, y in data])

    np.testing.assert_array_equal(labels_of(1), labels_of(1))
    assert sorted(labels_of(1)) == sorted(c.label for c in kws_task.train_corpus.clips(
        train_client))
    pooled = sum(int(tf.shape(y)[0]) for _, y in kws_task.pooled_dataset(training=False))
    assert pooled == kws_task.test_corpus.num_clips


def test_metric_sums_give_accuracy_and_per_class_errors(kws_task):
    logits = tf.one_hot([0, 1, 2, 2], len(CLASS_NAMES))
    sums = task_lib.classification_sums(logits, tf.constant([0, 1, 3, 2]), CLASS_NAMES)
    assert all(v.dtype == tf.float64 and v.shape == () for v in sums.values())
    metrics = kws_task.finalize_metrics({k: float(v) for k, v in sums.items()})
    assert metrics["accuracy"] == 0.75
    # Labels silence, unknown, no, yes; the "no" clip was taken for "yes".
    assert metrics["error_no"] == 1.0 and metrics["error_yes"] == 0.0
    assert metrics["error_silence"] == 0.0
    assert metrics["error_up"] == 0.0  # no such clips
    assert [m.name for m in kws_task.metrics] == list(metrics)
    assert not kws_task.metrics[0].lower_is_better


# ----------------------------------------------------------------------------- structure


def _shapes(model, layers):
    return {f"{v.name.split('/')[0]}/{v.name.split('/')[1].split(':')[0]}": tuple(v.shape)
            for v in model.trainable_weights if v.name.split("/")[0] in layers}


def test_column_units_are_whole_channels_through_the_depthwise_conv():
    model = model_lib.build_ds_cnn(TINY_MODEL)
    prunable = wrappers.select_prunable_layers(model)
    assert model_lib.depthwise_name(0) not in prunable  # never wrapped: a pass-through
    shapes = _shapes(model, prunable)
    structure = units.DsCnnStructure(TINY_MODEL.num_blocks)
    column = structures.build_unit_structure(shapes, "structured", "column", prunable,
                                             structure)
    for producer, _, consumer in model_lib.channel_streams(TINY_MODEL.num_blocks):
        kernel = column.unit_ids[f"{producer}/kernel"]
        consumer_ids = column.memberships(f"{consumer}/kernel")
        for c in range(kernel.shape[-1]):
            (unit,) = np.unique(kernel[..., c])
            assert column.unit_ids[f"{producer}/bias"][c] == unit
            row = [ids[..., c, :] if ids.ndim == 4 else ids[c] for ids in consumer_ids]
            assert np.all(np.any([r == unit for r in row], axis=0))
    channel = structures.build_unit_structure(shapes, "structured", "channel", prunable,
                                              structure)
    assert channel.num_units == TINY_MODEL.channels * (TINY_MODEL.num_blocks + 1)
    # With the depthwise kernels (what compaction sees) the channels are the same.
    all_shapes = {**shapes, **{f"{model_lib.depthwise_name(i)}/depthwise_kernel":
                               (3, 3, TINY_MODEL.channels, 1)
                               for i in range(TINY_MODEL.num_blocks)}}
    assert len(structure.couplings(all_shapes)) == 3 * TINY_MODEL.num_blocks + 1


@pytest.mark.parametrize("structure", ["column", "row", "channel"])
def test_compaction_is_exact_and_smaller(kws_task, structure):
    tf.keras.utils.set_random_seed(0)
    model = model_lib.build_ds_cnn(TINY_MODEL)
    masking.randomize_non_kernel_weights(model, seed=1)  # biases nonzero until pruned
    masking.apply_magnitude_masks(model, "structured", 0.5, structure,
                                  units.DsCnnStructure(TINY_MODEL.num_blocks))
    compact, report = compaction.compact_model(model, TINY_MODEL)
    assert report.compact_params < 0.75 * report.dense_params
    assert report.removed["channels"] > 0
    assert compact.count_params() == report.compact_params
    features = next(iter(kws_task.client_dataset(kws_task.test_client_ids[0],
                                                 training=False)))[0]
    diff = np.max(np.abs(model(features).numpy() - compact(features).numpy()))
    assert diff < 1e-4, diff
    # The compactor's rebuild has the compact widths and layer names.
    rebuilt = compaction.DsCnnCompactor(TINY_MODEL).build(report.widths)
    assert [l.name for l in rebuilt.layers] == [l.name for l in model.layers]
    assert rebuilt.count_params() == report.compact_params


def test_channels_with_zero_producers_are_cut_even_where_consumers_read_them(kws_task):
    tf.keras.utils.set_random_seed(0)
    model = model_lib.build_ds_cnn(TINY_MODEL)
    masking.randomize_non_kernel_weights(model, seed=1)
    last = model_lib.pointwise_name(TINY_MODEL.num_blocks - 1)
    for name, channels in ((model_lib.STEM, [0, 5]), (last, [1, 2, 3])):
        kernel, bias = model.get_layer(name).get_weights()
        kernel[..., channels], bias[channels] = 0.0, 0.0
        model.get_layer(name).set_weights([kernel, bias])
    compact, report = compaction.compact_model(model, TINY_MODEL)
    assert report.widths.channels == (14, 16, 13)
    features = next(iter(kws_task.client_dataset(kws_task.test_client_ids[0],
                                                 training=False)))[0]
    diff = np.max(np.abs(model(features).numpy() - compact(features).numpy()))
    assert diff < 1e-4, diff


# ----------------------------------------------------------------------------- spec


def test_spec_flags_config_and_registry(kws_root):
    from absl import flags

    spec = registry.get("kws")
    assert spec is spec_lib.SPEC
    spec.define_flags()
    spec.define_flags()  # guarded: defined once
    names = [n for n in flags.FLAGS if n.startswith("kws_")]
    assert "kws_corpus_dir" in names and all(n.startswith("kws_") for n in names)
    defaults = types.SimpleNamespace(**{n: flags.FLAGS[n].default for n in names})
    assert spec.config_from_flags(defaults, batch_size=16, seed=0) == spec.default_config()
    for name, value, match in (("kws_dropout", 1.5, "--kws_dropout"),
                               ("kws_clips_per_speaker", 0, "--kws_clips_per_speaker"),
                               ("kws_dirichlet_alpha", 0.0, "--kws_dirichlet_alpha")):
        bad = types.SimpleNamespace(**{**vars(defaults), name: value})
        with pytest.raises(config_lib.ConfigError, match=match):
            spec.config_from_flags(bad, batch_size=16, seed=0)
    json.dumps(__import__("dataclasses").asdict(spec.default_config()))
    values = types.SimpleNamespace(**{**vars(defaults), "kws_corpus_dir": kws_root,
                                      "kws_model_size": "tiny"})
    task = spec.build(spec.config_from_flags(values, batch_size=4, seed=0))
    assert len(task.train_client_ids) == 4 and task.model_config.channels == 16
    assert KwsCorpusError in spec.user_errors


# ----------------------------------------------------------------------------- federated


def test_federated_rounds_compact_exactly_and_export_a_serving_model(
        kws_task, tff_runtime, tmp_path):
    # The head's columns are the classes: kept dense (as in the presets), so the
    # last stream's channels are removed by their zero producer columns.
    pruning = config_lib.PruningConfig(
        scheme="structured", structure="column", exclude_layers=model_lib.EXCLUDE_LAYERS,
        schedule=schedule_lib.PruningSchedule(
            kind="constant", target_sparsity=0.5, begin_round=1, end_round=1,
            every_rounds=1, refine_rounds=0))
    built = process_lib.build_federated_pruning_process(
        kws_task, pruning, tff.learning.optimizers.build_sgdm(0.05),
        tff.learning.optimizers.build_sgdm(1.0))
    state = built.process.initialize()
    for round_num in (1, 2):
        data = [kws_task.client_dataset(c, training=True, seed=10 * round_num + i)
                for i, c in enumerate(kws_task.train_client_ids[:3])]
        output = built.process.next(state, data)
        state = output.state
    assert float(output.metrics["finalizer"]["sparsity"]) == pytest.approx(0.5, abs=0.05)

    wrapped = built.model_fn()
    built.process.get_model_weights(state).assign_weights_to(wrapped)
    masked = tfmot.sparsity.keras.strip_pruning(wrapped)
    compact, widths = kws_task.compactor().compact(masked)
    dense = model_lib.DsCnnWidths.dense(kws_task.model_config)
    assert all(a <= b for a, b in zip(widths.channels, dense.channels))
    assert widths != dense
    assert compact.count_params() < 0.75 * masked.count_params()
    features, _ = next(iter(kws_task.client_dataset(kws_task.test_client_ids[0],
                                                    training=False)))
    diff = np.max(np.abs(masked(features).numpy() - compact(features).numpy()))
    assert diff < 1e-4, diff
    pooled = evaluation.evaluate_model(kws_task, compact,
                                       kws_task.pooled_dataset(training=False))

    record = json.loads(json.dumps(kws_task.model_record()))
    export = registry.get("kws").export(record)
    assert isinstance(export, export_lib.KwsExport) and export.model_name == "kws"
    assert export.max_output_difference(masked, compact) < 1e-4
    path = str(tmp_path / "serving")
    assert list(export.save_serving_model(compact, path)) == ["serving_default"]
    serve = tf.saved_model.load(path).signatures["serving_default"]
    clips = kws_task.test_corpus.clips(kws_task.test_client_ids[0])[:2]
    audio = corpus_lib.read_clips(clips)
    out = serve(audio=tf.constant(audio[:, :12000]))  # shorter rows are zero-padded
    assert out["scores"].shape == (2, len(CLASS_NAMES))
    np.testing.assert_allclose(out["scores"].numpy().sum(-1), 1.0, atol=1e-5)
    padded = np.pad(audio[:, :12000], [[0, 0], [0, CLIP_SAMPLES - 12000]])
    expected = tf.nn.softmax(compact(features_lib.featurize(padded, kws_task.config.feature)))
    np.testing.assert_allclose(out["scores"].numpy(), expected.numpy(), atol=1e-5)
    labels = [s.decode() for s in out["label"].numpy()]
    assert labels == [CLASS_NAMES[i] for i in np.argmax(expected, -1)]

    # Federated evaluation (the task's sums inside TFF's graphs) of the masked
    # model adds up to the compact model's evaluation on the pooled clips. Last:
    # tracing a TFF computation invalidates the Keras models built before it.
    evaluate = federated_eval.build_federated_evaluation(
        kws_task, built.model_fn, built.index, pruning.masks_biases)
    # Its client loop reads the data through an iterator, without tf.data's
    # per-call rewrites (see test_compact_rounds).
    (options,) = loop_dataset_options(evaluate)
    assert options.optimization_options.HasField("apply_default_optimizations")
    assert not options.optimization_options.apply_default_optimizations
    ops = computation_op_types(evaluate)
    assert "IteratorGetNextAsOptional" in ops and "ReduceDataset" not in ops
    federated = federated_eval.finalize_eval_sums(kws_task, evaluate(
        state.global_model_weights,
        [kws_task.client_dataset(c, training=False) for c in kws_task.test_client_ids]))
    assert federated["num_examples"] == pooled["num_examples"] == kws_task.test_corpus.num_clips
    assert set(federated) == set(pooled) and "error_stop" in pooled
    for name, value in pooled.items():
        assert federated[name] == pytest.approx(value, abs=1e-4), name


def test_on_device_training_artifact_trains_like_the_keras_client_step(kws_task):
    export = registry.get("kws").export(json.loads(json.dumps(kws_task.model_record())))
    tf.keras.utils.set_random_seed(3)
    model = export.build_model()
    reference = export.build_model()
    reference.set_weights(model.get_weights())
    optimizer = tff.learning.optimizers.build_sgdm(0.05)
    content = on_device.convert(model, export.on_device_training(), optimizer,
                                on_device.zero_masks(model, mask_biases=False))
    interpreter = tf.lite.Interpreter(model_content=content)
    batch = export.example_training_batch()
    logits = interpreter.get_signature_runner("infer")(features=batch["features"])["logits"]
    np.testing.assert_allclose(logits, reference(batch["features"]).numpy(), atol=1e-5)
    train = interpreter.get_signature_runner("train")
    tflite_losses = [float(train(**batch)["loss"]) for _ in range(2)]
    state = optimizer.initialize(tuple(tf.TensorSpec(v.shape, v.dtype)
                                       for v in reference.trainable_weights))
    keras_losses = []
    for _ in range(2):
        state, loss, _, _ = local_step.masked_step(
            reference.trainable_weights, [None] * len(reference.trainable_weights), optimizer,
            state, lambda: task_lib.cross_entropy_batch_loss(
                reference, (tf.constant(batch["features"]), tf.constant(batch["labels"])),
                training=True))
        keras_losses.append(float(loss))
    np.testing.assert_allclose(tflite_losses, keras_losses, rtol=1e-5)
    assert tflite_losses[1] < tflite_losses[0]


def test_without_worker_datasets_the_controller_sends_datasets(kws_task):
    """KWS has no worker-side datasets: its clients receive datasets built
    here, and round computations are used as they are."""
    from tff_prune.federated import client_data  # pylint: disable=import-outside-toplevel

    assert kws_task.worker_datasets(training=True) is None
    inputs = client_data.ClientInputs(kws_task, training=True, epochs=2)
    assert not inputs.by_id and inputs.worker_root is None
    client = kws_task.train_client_ids[0]
    (dataset,) = inputs.values([client], [5])
    examples = sum(int(tf.shape(y)[0]) for _, y in dataset)
    assert examples == 2 * sum(int(tf.shape(y)[0]) for _, y in
                               kws_task.client_dataset(client, training=True, seed=5))
    computation = tff.tensorflow.computation(lambda: 1)
    assert inputs.compose(computation) is computation
