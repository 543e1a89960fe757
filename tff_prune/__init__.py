"""tff-prune: federated pruning (Zhao et al., Interspeech 2022) with TFF and tfmot.

The library is task-agnostic; what is trained lives in ``tasks/``. Packages,
lowest first (each may import only the ones before it; see each package's
docstring, and ``tests/test_import_direction.py``, which checks it):

* ``pruning``: pure-TensorFlow mask math (units, scores, masks, votes,
  schedules) and the pruning config. Imports nothing else of ours.
* ``task``: the task interface (`base.FederatedTask`, `TaskSpec`, ...) that
  ``tasks/`` implement.
* ``model``: a task's Keras model wrapped for pruning (tfmot wrappers, mask
  decisions, evaluation, training FLOPs).
* ``federated``: the method as a TFF ``LearningProcess`` (client work,
  aggregation, finalizer, compact rounds, wire forms, optimizers).
* ``centralized``: the centralized baseline and its pruner.
* ``export``: compaction, the TF Serving SavedModel and TFLite.
* ``runtime``: TFF's C++ workers, owned (never outliving the program).
* ``report``: the Markdown/PNG report of finished runs (reads files only).
* ``program``: the experiment program (flags, config, drivers, output
  folder, checkpoints, accounting) and the task registry, the one place
  that names the tasks.

Entry points (programs, imported by nothing): ``run_experiment.py``,
``python -m tff_prune.export``, ``python -m tff_prune.report`` and
``python -m tff_prune.worker`` (this package's `worker` module).
"""
