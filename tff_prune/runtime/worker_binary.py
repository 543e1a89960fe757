"""Where TFF's C++ `worker_binary` is, found without importing TFF (slow)."""

from __future__ import annotations

import importlib.util
import os


def worker_binary_path() -> str:
    """Path of the C++ `worker_binary` shipped inside the TFF package."""
    spec = importlib.util.find_spec("tensorflow_federated")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("tensorflow_federated is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "worker_binary")
