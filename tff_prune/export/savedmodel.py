"""SavedModel facts shared by every task's export: metadata file, sizes, ops.

The serving signatures themselves are the task's (`TaskExport.save_serving_model`,
e.g. the ASR task's audio-in, transcripts-out signatures).
"""

from __future__ import annotations

import os

# Inside the version directory, where TF Serving and the loader leave it alone.
METADATA_FILE = os.path.join("assets.extra", "export_metadata.json")


def saved_model_bytes(path: str) -> int:
    """Bytes of the SavedModel proper: ``saved_model.pb`` and ``variables/`` (not assets.extra)."""
    total = os.path.getsize(os.path.join(path, "saved_model.pb"))
    for root, _, files in os.walk(os.path.join(path, "variables")):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def graph_op_types(path: str) -> set[str]:
    """Every op type in the SavedModel's graph and function library."""
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops = set()
    for graph in proto.meta_graphs:
        ops.update(node.op for node in graph.graph_def.node)
        for function in graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops
