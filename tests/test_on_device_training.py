"""The on-device training artifact (`assets.extra/train.tflite`): TFLite's steps are the client's."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow.python.training import py_checkpoint_reader

from conftest import build_once
from tasks.asr import model as model_lib
from tasks.asr import task as task_lib
from tasks.asr import text
from tasks.asr import units
from tasks.asr.export import AsrExport
from tff_prune.export import compaction
from tff_prune.export import masking
from tff_prune.export import on_device
from tff_prune.export import pipeline
from tff_prune.export import savedmodel
from tff_prune.federated import optimizers
from tff_prune.model import local_step

CFG = model_lib.ConformerConfig.micro(dropout=0.0)
EXPORT = AsrExport(CFG)
LEARNING_RATE, MOMENTUM = 0.002, 0.9
STEPS = 3


def _optimizer():
    return tff.learning.optimizers.build_sgdm(LEARNING_RATE, momentum=MOMENTUM)


def _batch(seed: int) -> dict:
    return EXPORT.example_training_batch(seconds=1.0, seed=seed)


@pytest.fixture(scope="module")
def masked_model():
    """A micro Conformer at 50% column sparsity (biases random, so only pruning zeroes one)."""
    tf.keras.utils.set_random_seed(0)
    model = model_lib.build_conformer_ctc(CFG, text.VOCAB_SIZE)
    masking.randomize_non_kernel_weights(model, seed=1)
    masking.apply_magnitude_masks(model, "structured", 0.5, "column",
                                  units.ConformerStructure(CFG.num_heads))
    return model


@pytest.fixture(scope="module")
def exported(masked_model, shared_dir):
    """The compact export's metadata and the path of its artifact (SGD with
    momentum: a state to save), exported once for both xdist workers."""
    def build(path):
        pipeline.export_model(masked_model, EXPORT, str(path), compact=True, tflite=False,
                              on_device_optimizer=_optimizer(), mask_biases=True)
    version = build_once(shared_dir, "on_device_export", build) / EXPORT.model_name / "1"
    with open(version / savedmodel.METADATA_FILE) as f:
        return json.load(f)["export"], str(version / on_device.TRAIN_TFLITE_FILE)


def _interpreter(path: str) -> tf.lite.Interpreter:
    with open(path, "rb") as f:
        return tf.lite.Interpreter(model_content=f.read())


def _compact(masked_model):
    compact_model, _ = compaction.compact(EXPORT.compactor(), masked_model)
    return compact_model


def _saved(interpreter, path: str) -> dict[str, np.ndarray]:
    """Everything the artifact's ``save`` signature writes (model/N, optimizer/N)."""
    interpreter.get_signature_runner("save")(checkpoint_path=np.array(path.encode()))
    reader = py_checkpoint_reader.NewCheckpointReader(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def _model_weights(saved: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [saved[f"model/{i}"] for i in range(sum(k.startswith("model/") for k in saved))]


def test_train_signature_steps_are_the_keras_client_steps(masked_model, exported, tmp_path):
    result, path = exported
    assert result["train_tflite_bytes"] == os.path.getsize(path)
    # The SavedModel it was converted from is gone from the version.
    version = os.path.dirname(os.path.dirname(path))
    assert not [name for name in os.listdir(version) if name.startswith(".")]
    assert "Conv2DBackpropFilter" in result["train_select_tf_ops"]
    interpreter = _interpreter(path)
    train = interpreter.get_signature_runner("train")
    tflite_losses = [float(train(**_batch(0))["loss"]) for _ in range(STEPS)]
    tflite_weights = _model_weights(_saved(interpreter, str(tmp_path / "after")))

    # The reference: the client's step (`masked_step`, the task's own loss with
    # TensorFlow's CTC kernel) on the same compact Keras model, in TensorFlow.
    model = _compact(masked_model)
    before = [v.numpy() for v in model.variables]
    trainable = model.trainable_weights
    masks = on_device.zero_masks(model, mask_biases=True)
    # What compaction leaves of column pruning is whole zero columns: vectors.
    assert all(m is None or np.prod(m.shape) == max(m.shape) for m in masks)
    optimizer = _optimizer()
    state = optimizer.initialize(tuple(tf.TensorSpec(v.shape, v.dtype) for v in trainable))
    keras_losses = []
    for _ in range(STEPS):
        b = {k: tf.constant(v) for k, v in _batch(0).items()}
        batch = ({"features": b["features"], "feature_lengths": b["feature_lengths"]},
                 {"labels": b["labels"], "label_lengths": b["label_lengths"]})
        state, loss, _, _ = local_step.masked_step(
            trainable, masks, optimizer, state,
            lambda batch=batch: task_lib.ctc_batch_loss(model, batch, training=True))
        keras_losses.append(float(loss))

    np.testing.assert_allclose(tflite_losses, keras_losses, rtol=1e-4)
    assert tflite_losses[2] < tflite_losses[1] < tflite_losses[0]  # it trains
    assert len(tflite_weights) == len(before)
    moved = 0.0
    for variable, start, trained in zip(model.variables, before, tflite_weights):
        np.testing.assert_allclose(trained, variable.numpy(), atol=1e-4, err_msg=variable.name)
        # Pruned weights that compaction kept stay exactly zero.
        assert not trained[start == 0].any(), variable.name
        moved = max(moved, float(np.abs(trained - start).max()))
    assert moved > 1e-3
    assert sum(int((start == 0).sum()) for start in before) > 0  # zeros were left to keep


def test_restore_after_save_gives_the_saved_weights_and_state_exactly(exported, tmp_path):
    interpreter = _interpreter(exported[1])
    train = interpreter.get_signature_runner("train")
    train(**_batch(10))
    path = str(tmp_path / "saved")
    at_save = _saved(interpreter, path)
    assert any(k.startswith("optimizer/") and v.any() for k, v in at_save.items())  # momentum
    train(**_batch(11))
    after_next_step = _saved(interpreter, str(tmp_path / "next"))
    train(**_batch(12))
    moved = _saved(interpreter, str(tmp_path / "moved"))
    assert any(not np.array_equal(at_save[k], moved[k]) for k in at_save)
    interpreter.get_signature_runner("restore")(checkpoint_path=np.array(path.encode()))
    restored = _saved(interpreter, str(tmp_path / "restored"))
    assert restored.keys() == at_save.keys()
    for name, value in at_save.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)
    # Weights and optimizer state both came back: the same step lands where it did.
    train(**_batch(11))
    again = _saved(interpreter, str(tmp_path / "again"))
    for name, value in after_next_step.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)


def test_infer_signature_gives_the_compact_models_logits(masked_model, exported):
    batch = _batch(20)
    out = _interpreter(exported[1]).get_signature_runner("infer")(
        features=batch["features"], feature_lengths=batch["feature_lengths"])
    logits = _compact(masked_model)(
        {"features": batch["features"], "feature_lengths": batch["feature_lengths"]},
        training=False).numpy()
    n = int(out["logit_lengths"][0])
    assert n == int(model_lib.output_lengths(batch["feature_lengths"])[0])
    np.testing.assert_allclose(out["logits"][:, :n], logits[:, :n], atol=1e-4)


def test_masks_keep_the_zeros_of_prunable_kernels_only(masked_model):
    dense = model_lib.build_conformer_ctc(CFG, text.VOCAB_SIZE)
    assert all(m is None for m in on_device.zero_masks(dense, mask_biases=True))
    masks = on_device.zero_masks(masked_model, mask_biases=True)
    by_name = {v.name: m for v, m in zip(masked_model.trainable_weights, masks)}
    for variable in masked_model.trainable_weights:
        mask = by_name[variable.name]
        if variable.name.endswith("kernel:0") and not np.all(variable.numpy() != 0):
            np.testing.assert_array_equal(np.broadcast_to(mask.numpy(), variable.shape),
                                          variable.numpy() != 0)
        elif variable.name.endswith("bias:0") and mask is not None:
            # The bias of a unit whose kernel column is all zero.
            np.testing.assert_array_equal(mask.numpy() == 0, variable.numpy() == 0)
        else:
            assert mask is None, variable.name
    without_biases = on_device.zero_masks(masked_model, mask_biases=False)
    assert not any(m is not None and v.name.endswith("bias:0") for v, m in
                   zip(masked_model.trainable_weights, without_biases))


def test_the_runs_client_optimizer_trains_on_device():
    hparams = on_device.optimizer_hparams
    recorded = hparams(optimizers.client_optimizer_of(
        {"client_optimizer": "adam", "client_learning_rate": 3e-3}))
    assert "beta_1" in recorded and recorded["learning_rate"] == pytest.approx(3e-3)
    unknown = hparams(optimizers.client_optimizer_of({}))
    assert set(unknown) == {"learning_rate"}
    assert unknown["learning_rate"] == pytest.approx(
        optimizers.DEFAULT_CLIENT_OPTIMIZER[1])
