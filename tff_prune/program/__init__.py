"""The experiment program: one run of federated (or centralized) pruning.

* ``experiment``: `run(config)`, the program itself.
* ``experiment_flags``, ``experiment_config``: absl flags -> a validated config.
* ``registry``: the tasks by name (``--task``), the one place naming them.
* ``federated_driver``, ``centralized_driver``: rounds (or epochs), evaluation,
  checkpoints, metrics.
* ``output_dir``: the run's folder: resume, extend, refuse or replace.
* ``checkpoints``, ``metric_writers``, ``final_model``: what a run leaves.
* ``accounting``: sparsity, model sizes, bytes on the wire, FLOPs.

The top of the library: may import every other package, and the tasks
(through the registry only).
"""
