"""One export: (compaction) -> serving SavedModel -> TFLite (inference and on-device
training), as a new TF Serving version.

What is served is the task's (`tff_prune.task.base.TaskExport`: its signatures, its
compaction, its equivalence batch); this module only orders the steps and
writes the version.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any, Optional

import tensorflow as tf

from tff_prune.export import checkpoint as checkpoint_lib
from tff_prune.export import compaction
from tff_prune.export import on_device
from tff_prune.export import savedmodel
from tff_prune.export import serving_layout
from tff_prune.export import tflite as tflite_lib
from tff_prune.pruning import config as config_lib
from tff_prune.task import base

COMPACT_CHOICES = ("auto", "yes", "no")
TFLITE_FILE = os.path.join("assets.extra", "model.tflite")
TFLITE_SPARSE_FILE = os.path.join("assets.extra", "model_sparse.tflite")
# Schemes whose zeros are scattered: TFLite's sparse encoding may pay off.
_SPARSE_SCHEMES = ("unstructured", "block", "m_by_n")
# A compact model must compute what the masked one does, up to float rounding.
EQUIVALENCE_TOLERANCE = 1e-4


@dataclasses.dataclass
class ExportResult:
    """What one export wrote and measured."""

    path: str
    version: int
    params: int                       # parameters of the exported model
    saved_model_bytes: int
    compaction: Optional[compaction.CompactionReport] = None
    # compact vs masked, on the task's test batch (`TaskExport.max_output_difference`)
    max_logit_difference: Optional[float] = None
    tflite_bytes: Optional[int] = None
    tflite_sparse_bytes: Optional[int] = None
    # The on-device training artifact (`on_device`), when written.
    train_tflite_bytes: Optional[int] = None
    train_select_tf_ops: Optional[list[str]] = None
    train_optimizer: Optional[dict[str, float]] = None  # its hyperparameters

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (also stored in the export's metadata)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "compaction"}
        if self.compaction is not None:
            out["compaction"] = self.compaction.to_json()
        return out


def _strip(model: tf.keras.Model) -> tf.keras.Model:
    if any(layer.name.startswith("prune_low_magnitude_") for layer in model.layers):
        import tensorflow_model_optimization as tfmot  # pylint: disable=import-outside-toplevel
        return tfmot.sparsity.keras.strip_pruning(model)
    return model


def _masks_biases(pruning: dict) -> bool:
    """`PruningConfig.masks_biases` of a summary's pruning record ({}: none)."""
    names = {f.name for f in dataclasses.fields(config_lib.PruningConfig)}
    return config_lib.PruningConfig(
        **{k: v for k, v in pruning.items() if k in names}).masks_biases


def should_compact(compact: str, pruning: dict) -> bool:
    """``yes``/``no``, or ``auto``: compact structured-pruned models."""
    if compact not in COMPACT_CHOICES:
        raise ValueError(f"compact must be one of {COMPACT_CHOICES}, not {compact!r}")
    if compact == "auto":
        return pruning.get("scheme") == "structured"
    return compact == "yes"


def _compact(model: tf.keras.Model, task_export: base.TaskExport
             ) -> tuple[tf.keras.Model, compaction.CompactionReport, float]:
    """The compact model, its report and its max difference from ``model``;
    AssertionError (nothing written) unless they agree."""
    compactor = task_export.compactor()
    if compactor is None:
        raise ValueError(f"the {task_export.model_name} task has no compaction")
    compact_model, report = compaction.compact(compactor, model)
    diff = compaction.check_equivalence(
        task_export.max_output_difference(model, compact_model), EQUIVALENCE_TOLERANCE)
    return compact_model, report, diff


def export_model(model: tf.keras.Model, task_export: base.TaskExport, export_base: str,
                 model_name: Optional[str] = None, *, compact: bool = False,
                 tflite: bool = True, tflite_sparsity: bool = False,
                 on_device_optimizer: Optional[Any] = None, mask_biases: bool = False,
                 metadata: Optional[dict] = None) -> ExportResult:
    """Exports ``model`` as the next version of ``export_base/model_name``.

    ``model``: the masked Keras model (tfmot wrappers are stripped here).
    ``task_export``: its task's serving side; ``model_name`` None is its
    ``model_name``. ``compact``: rebuild without inert units first (the
    task's compactor; checked against the masked model, max |output diff|
    < 1e-4, else nothing is written). ``tflite``: also convert the task's
    ``tflite_signature`` to ``assets.extra/model.tflite`` (and, with
    ``tflite_sparsity``, ``model_sparse.tflite``) inside the version.
    ``on_device_optimizer``: a `tff.learning.optimizers.Optimizer`: also
    write the exported model's on-device training artifact
    (``assets.extra/train.tflite``, `on_device`) training with it, when the
    task has one; ``mask_biases``: whether its masks take the biases of
    units with an all-zero kernel (the run's `PruningConfig.masks_biases`).
    """
    model = _strip(model)
    report, diff = None, None
    if compact:
        model, report, diff = _compact(model, task_export)
    result = ExportResult(path="", version=0, params=compaction.count_parameters(model),
                          saved_model_bytes=0, compaction=report, max_logit_difference=diff)
    tflite_signature = task_export.tflite_signature if tflite else None

    def write(path: str) -> None:
        signatures = list(task_export.save_serving_model(model, path))
        result.saved_model_bytes = savedmodel.saved_model_bytes(path)
        os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
        if tflite_signature:
            content = tflite_lib.convert(path, tflite_signature)
            with open(os.path.join(path, TFLITE_FILE), "wb") as f:
                f.write(content)
            result.tflite_bytes = len(content)
            if tflite_sparsity:
                content = tflite_lib.convert(path, tflite_signature, sparsity=True)
                with open(os.path.join(path, TFLITE_SPARSE_FILE), "wb") as f:
                    f.write(content)
                result.tflite_sparse_bytes = len(content)
        training = task_export.on_device_training() if on_device_optimizer else None
        if training is not None:
            # Converted beside the version being written (removed before it is
            # renamed into place).
            content = on_device.convert(model, training, on_device_optimizer,
                                        on_device.zero_masks(model, mask_biases), work_dir=path)
            with open(os.path.join(path, on_device.TRAIN_TFLITE_FILE), "wb") as f:
                f.write(content)
            result.train_tflite_bytes = len(content)
            result.train_select_tf_ops = on_device.select_tf_ops(content)
            result.train_optimizer = on_device.optimizer_hparams(on_device_optimizer)
        info = {"export": result.describe(), **task_export.metadata(),
                "signatures": signatures, "tensorflow": tf.__version__, **(metadata or {})}
        info["export"].pop("path")
        info["export"].pop("version")
        with open(os.path.join(path, savedmodel.METADATA_FILE), "w") as f:
            json.dump(info, f, indent=2, sort_keys=True)

    where = serving_layout.write_new_version(
        export_base, model_name or task_export.model_name, write)
    result.path, result.version = where.path, where.version
    return result


#: The run's recorded federated config (summary.json's ``config.federated``,
#: ``{}`` when none) -> the `tff.learning.optimizers.Optimizer` the on-device
#: artifact trains with.
OptimizerFor = Callable[[dict], Any]


class ExportError(RuntimeError):
    """An export that failed (unwritable base, failed conversion): one line."""


def export_saved_run(run: checkpoint_lib.SavedRun, export_base: str,
                     model_name: Optional[str] = None, compact: str = "auto",
                     tflite: bool = True,
                     on_device_optimizer_for: Optional[OptimizerFor] = None) -> ExportResult:
    """Exports a loaded run (`checkpoint.load_saved_run`); see `export_checkpoint`."""
    try:
        compact_it = should_compact(compact, run.pruning)
        if compact_it and compact == "auto" and run.task_export.compactor() is None:
            compact_it = False  # the task cannot compact: export the masked model
        # Reads the run, writes only under export_base: a failure here never
        # touches the trained model.
        return export_model(
            run.model, run.task_export, export_base, model_name, compact=compact_it,
            tflite=tflite,
            tflite_sparsity=tflite and run.pruning.get("scheme") in _SPARSE_SCHEMES,
            on_device_optimizer=(on_device_optimizer_for(run.federated)
                                 if on_device_optimizer_for else None),
            mask_biases=_masks_biases(run.pruning),
            metadata={"source_checkpoint": os.path.abspath(run.weights_prefix),
                      "pruning": run.pruning})
    except (OSError, ValueError, RuntimeError) as e:
        cause = " ".join(str(e).split())[:300] or type(e).__name__
        raise ExportError(f"cannot export to {export_base}: {cause}") from e


def export_checkpoint(checkpoint: str, export_base: str,
                      task_export_for: checkpoint_lib.TaskExportFor,
                      model_name: Optional[str] = None, compact: str = "auto",
                      tflite: bool = True,
                      on_device_optimizer_for: Optional[OptimizerFor] = None) -> ExportResult:
    """Exports a saved run (experiment dir, its ``final_model/`` or weights prefix).

    ``task_export_for`` turns the run's record into its task's serving side
    (`tff_prune.program.registry.task_export`).

    ``model_name`` None is the task's. Structured runs are compacted
    (``auto``) when the task can; ``yes`` with a task that cannot is an
    `ExportError`. TFLite's sparsity optimization is tried for unstructured,
    block and 2:4 runs. ``on_device_optimizer_for``: also write the
    on-device training artifact, training with the optimizer it returns for
    the run's recorded federated config (``{}`` when none; e.g.
    `tff_prune.federated.optimizers.client_optimizer_of`, given by the
    caller: the export does not import the federated package).
    """
    return export_saved_run(checkpoint_lib.load_saved_run(checkpoint, task_export_for),
                            export_base, model_name, compact, tflite,
                            on_device_optimizer_for)
