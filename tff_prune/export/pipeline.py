"""One export: (compaction) -> serving SavedModel -> TFLite, as a new TF Serving version."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import tensorflow as tf

from tasks.asr import features as features_lib
from tasks.asr import model as model_lib
from tff_prune.export import checkpoint as checkpoint_lib
from tff_prune.export import compaction
from tff_prune.export import savedmodel
from tff_prune.export import serving_layout
from tff_prune.export import tflite as tflite_lib

COMPACT_CHOICES = ("auto", "yes", "no")
TFLITE_FILE = os.path.join("assets.extra", "model.tflite")
TFLITE_SPARSE_FILE = os.path.join("assets.extra", "model_sparse.tflite")
# Schemes whose zeros are scattered: TFLite's sparse encoding may pay off.
_SPARSE_SCHEMES = ("unstructured", "block", "m_by_n")


@dataclasses.dataclass
class ExportResult:
    """What one export wrote and measured."""

    path: str
    version: int
    params: int                       # parameters of the exported model
    saved_model_bytes: int
    compaction: Optional[compaction.CompactionReport] = None
    max_logit_difference: Optional[float] = None  # compact vs masked (random features)
    tflite_bytes: Optional[int] = None
    tflite_sparse_bytes: Optional[int] = None

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (also stored in the export's metadata)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "compaction"}
        if self.compaction is not None:
            out["compaction"] = {
                "dense_params": self.compaction.dense_params,
                "compact_params": self.compaction.compact_params,
                "removed": self.compaction.removed,
                "widths": self.compaction.widths.to_json()}
        return out


def _strip(model: tf.keras.Model) -> tf.keras.Model:
    if any(layer.name.startswith("prune_low_magnitude_") for layer in model.layers):
        import tensorflow_model_optimization as tfmot  # pylint: disable=import-outside-toplevel
        return tfmot.sparsity.keras.strip_pruning(model)
    return model


def should_compact(compact: str, pruning: dict) -> bool:
    """``yes``/``no``, or ``auto``: compact structured-pruned models."""
    if compact not in COMPACT_CHOICES:
        raise ValueError(f"compact must be one of {COMPACT_CHOICES}, not {compact!r}")
    if compact == "auto":
        return pruning.get("scheme") == "structured"
    return compact == "yes"


def export_model(model: tf.keras.Model, model_config: model_lib.ConformerConfig,
                 feature_config: features_lib.FeatureConfig, export_base: str,
                 model_name: str = "asr", *, compact: bool = False, tflite: bool = True,
                 tflite_sparsity: bool = False, metadata: Optional[dict] = None
                 ) -> ExportResult:
    """Exports ``model`` as the next version of ``export_base/model_name``.

    ``model``: the masked Keras Conformer (tfmot wrappers are stripped here).
    ``compact``: rebuild without inert units first (checked against the
    masked model, max |logit diff| < 1e-4, else nothing is written).
    ``tflite``: also convert to ``assets.extra/model.tflite`` (and, with
    ``tflite_sparsity``, ``model_sparse.tflite``) inside the version.
    """
    model = _strip(model)
    report, diff = None, None
    if compact:
        compact_model, report = compaction.compact_model(model, model_config)
        diff = compaction.check_equivalence(model, compact_model, model_config.num_mel_bins)
        model = compact_model
    result = ExportResult(path="", version=0, params=model_lib.count_parameters(model),
                          saved_model_bytes=0, compaction=report, max_logit_difference=diff)

    def write(path: str) -> None:
        savedmodel.save_serving_model(model, feature_config, path)
        result.saved_model_bytes = savedmodel.saved_model_bytes(path)
        os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
        if tflite:
            content = tflite_lib.convert(path)
            with open(os.path.join(path, TFLITE_FILE), "wb") as f:
                f.write(content)
            result.tflite_bytes = len(content)
            if tflite_sparsity:
                content = tflite_lib.convert(path, sparsity=True)
                with open(os.path.join(path, TFLITE_SPARSE_FILE), "wb") as f:
                    f.write(content)
                result.tflite_sparse_bytes = len(content)
        info = {"export": result.describe(), "model_config": dataclasses.asdict(model_config),
                "feature_config": dataclasses.asdict(feature_config),
                "signatures": [savedmodel.SERVING_SIGNATURE, savedmodel.FEATURES_SIGNATURE,
                               savedmodel.UTTERANCE_SIGNATURE],
                "tensorflow": tf.__version__, **(metadata or {})}
        info["export"].pop("path")
        info["export"].pop("version")
        with open(os.path.join(path, savedmodel.METADATA_FILE), "w") as f:
            json.dump(info, f, indent=2, sort_keys=True)

    where = serving_layout.write_new_version(export_base, model_name, write)
    result.path, result.version = where.path, where.version
    return result


class ExportError(RuntimeError):
    """An export that failed (unwritable base, failed conversion): one line."""


def export_checkpoint(checkpoint: str, export_base: str, model_name: str = "asr",
                      compact: str = "auto", tflite: bool = True) -> ExportResult:
    """Exports a saved run (experiment dir, its ``final_model/`` or weights prefix).

    TFLite's sparsity optimization is tried for unstructured, block and 2:4 runs.
    """
    run = checkpoint_lib.load_saved_run(checkpoint)
    try:
        # Reads the run, writes only under export_base: a failure here never
        # touches the trained model.
        return export_model(
            run.model, run.model_config, run.feature_config, export_base, model_name,
            compact=should_compact(compact, run.pruning), tflite=tflite,
            tflite_sparsity=tflite and run.pruning.get("scheme") in _SPARSE_SCHEMES,
            metadata={"source_checkpoint": os.path.abspath(run.weights_prefix),
                      "pruning": run.pruning})
    except (OSError, ValueError, RuntimeError) as e:
        cause = " ".join(str(e).split())[:300] or type(e).__name__
        raise ExportError(f"cannot export to {export_base}: {cause}") from e
