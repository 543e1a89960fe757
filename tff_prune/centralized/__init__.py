"""The centralized baseline: the same task trained on pooled data.

* ``training``: the training loop (`train_centralized`), resumable per epoch.
* ``pruner``: centralized pruning, the paper's comparison point.

Imports `pruning`, `task` and `model` only.
"""
