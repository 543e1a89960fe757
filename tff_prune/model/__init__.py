"""A task's Keras model, wrapped for pruning and measured.

* ``wrappers``: tfmot pruning wrappers driven by our processes; the index of
  prunable weights; masks applied to weights.
* ``mask_policy``: which kernels a method covers and their masks, from
  scores or client votes (`MaskDecider`).
* ``variable_model``: the model as a ``tff.learning.models.VariableModel``.
* ``evaluation``: held-out loss and the task's metric sums.
* ``client_cost``: a training step's FLOPs, measured on the model.

Imports `pruning` and `task` only.
"""
