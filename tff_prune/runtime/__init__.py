"""TFF runtimes the program owns: C++ workers that never outlive it.

* ``owned``: local and remote TFF workers as one execution context
  (`federated_runtime`), with worker loss reported, never retried forever.
* ``worker_binary``: where TFF's ``worker_binary`` is, without importing TFF.

``python -m tff_prune.worker`` (the `tff_prune.worker` entry point) runs one
worker for remote controllers. Imports nothing else of `tff_prune`.
"""
