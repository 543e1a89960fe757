"""The method as one TFF ``LearningProcess``, composed from its parts.

* ``process``: `build_federated_pruning_process` (broadcast -> client work ->
  aggregator -> finalizer).
* ``client_work``: masked local training; Taylor scores and client votes.
* ``client_model``, ``wire``: the model's form on the wire, and its bytes.
* ``aggregation``: masked weighted means, bit-packed vote means, float64 sums.
* ``finalizer``: the server optimizer step, then the scheduled mask update.
* ``compact_rounds``: rounds in which clients train the physically smaller model.
* ``client_data``: how a round's client data reach the clients (ids or datasets).
* ``federated_eval``: held-out federated evaluation with the current masks.
* ``optimizers``: client and server optimizers, learning rates over rounds.

Imports `pruning`, `task` and `model` only.
"""
