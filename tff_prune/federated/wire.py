"""Bytes on the wire, read from TFF types: what a value of that type carries.

Every number of bytes the program reports per round comes from here, applied
to the type of the value that crosses the placement boundary (the broadcast
argument of the client computation, one client's result), so it is what TFF
moves, not a formula: every tensor's elements times its dtype's size.
"""

from __future__ import annotations

import numpy as np
import tensorflow_federated as tff


def type_bytes(value_type: tff.types.Type) -> int:
    """Bytes of one value of `value_type` (tensors summed over its structure).

    Federated types count their member (one client's or the server's value).
    Raises for sequences and tensors of unknown shape, whose size the type
    does not fix.
    """
    if isinstance(value_type, tff.FederatedType):
        return type_bytes(value_type.member)
    if isinstance(value_type, tff.TensorType):
        if value_type.shape is None or any(d is None for d in value_type.shape):
            raise ValueError(f"{value_type} has no fixed size")
        elements = int(np.prod(value_type.shape, dtype=np.int64))
        return elements * np.dtype(value_type.dtype).itemsize
    if isinstance(value_type, tff.StructType):
        return sum(type_bytes(t) for _, t in tff.structure.iter_elements(value_type))
    raise ValueError(f"no fixed size for a value of type {value_type}")
