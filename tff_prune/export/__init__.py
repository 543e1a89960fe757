"""Deployment of a trained (pruned) model: TF Serving export, compaction, TFLite.

* `export_checkpoint(checkpoint, export_base, task_export_for)` /
  `export_model(...)`: a new version ``EXPORT_BASE/MODEL_NAME/VERSION/``
  (written beside, renamed into place) holding the task's serving SavedModel
  (`tff_prune.task.base.TaskExport`, rebuilt from the run's record by
  `checkpoint` with the caller's `task_export_for`), compacted first for
  structured pruning (the task's compactor on `compaction`'s machinery), with
  its ``.tflite`` in ``assets.extra/`` (`tflite`).
* ``python -m tff_prune.export --checkpoint=... --export_dir=...`` does it
  from the command line; each task's own client talks to TF Serving
  (see docs/serving.md).

Imports `pruning`, `task` and `model` only (a task is looked up by the
caller: the program's registry). Imports are lazy so that
``python -m tff_prune.export`` can set TensorFlow's log level before
TensorFlow loads.
"""

__all__ = ["ExportError", "ExportResult", "export_checkpoint", "export_model"]


def __getattr__(name):
    if name in __all__:
        from tff_prune.export import pipeline  # pylint: disable=import-outside-toplevel
        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
