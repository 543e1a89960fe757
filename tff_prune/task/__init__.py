"""The task interface: what a task (``tasks/``) gives the library.

`base` defines it: data (`FederatedTask`, `WorkerDatasets`), model and loss,
metrics, the pruning structure (`ModelStructure`), compaction (`Compactor`),
the serving side (`TaskExport`) and flags (`TaskSpec`). Tasks implement it;
the library never names a task. Imports `pruning` only.
"""
