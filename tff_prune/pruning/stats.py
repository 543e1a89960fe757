"""Sparsity and size statistics of weights or masks (graph-compatible; call
``float()`` / ``int()`` on the results in eager code).

Size model: ``dense_bytes`` = 4 bytes (fp32) per parameter. ``sparse_bytes``
= 4 bytes per nonzero value + a 1-bit-per-element occupancy bitmask, rounded
up to whole bytes per tensor: a simple, format-agnostic estimate (CSR with
int32 indices would cost 8 bytes per nonzero and beats the bitmask only
below ~3% density; N:M and block formats need less index data).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

import tensorflow as tf

Tensors = Mapping[str, tf.Tensor]


def _select(tensors: Tensors, keys: Optional[Iterable[str]]) -> list[tf.Tensor]:
    return [tf.convert_to_tensor(tensors[k]) for k in (tensors if keys is None else keys)]


def sparsity_per_key(tensors: Tensors) -> dict[str, tf.Tensor]:
    """Fraction of exact zeros of each tensor (weights or masks alike)."""
    out = {}
    for key, t in zip(tensors, _select(tensors, None)):
        out[key] = 1.0 - tf.math.count_nonzero(t, dtype=tf.float32) / float(max(t.shape.num_elements(), 1))
    return out


def count_nonzero_params(tensors: Tensors, keys: Optional[Iterable[str]] = None) -> tf.Tensor:
    """Total nonzero elements (int64) over ``keys`` (all by default)."""
    return tf.add_n([tf.math.count_nonzero(t, dtype=tf.int64) for t in _select(tensors, keys)]
                    or [tf.constant(0, tf.int64)])


def count_params(tensors: Tensors, keys: Optional[Iterable[str]] = None) -> int:
    """Total elements over ``keys`` (static)."""
    return int(sum(t.shape.num_elements() for t in _select(tensors, keys)))


def overall_sparsity(kernels: Tensors, keys: Optional[Iterable[str]] = None) -> tf.Tensor:
    """Zeros / elements over the given (prunable) kernels, float32."""
    total = count_params(kernels, keys)
    nonzero = tf.cast(count_nonzero_params(kernels, keys), tf.float32)
    return 1.0 - nonzero / float(max(total, 1))


def dense_bytes(tensors: Tensors, keys: Optional[Iterable[str]] = None) -> int:
    """fp32 storage of all elements."""
    return 4 * count_params(tensors, keys)


def sparse_bytes(tensors: Tensors, keys: Optional[Iterable[str]] = None) -> tf.Tensor:
    """fp32 nonzero values + a 1-bit-per-element bitmask per tensor (int64)."""
    bitmask = sum(-(-t.shape.num_elements() // 8) for t in _select(tensors, keys))
    return 4 * count_nonzero_params(tensors, keys) + bitmask


def mask_sparsity(masks: Tensors, covered_keys: Optional[Iterable[str]] = None
                  ) -> dict[str, tf.Tensor]:
    """THE sparsity of a pruning method: pruned fraction of the masks of the
    kernels it covers (``covered_keys``, all by default), per kernel and
    ``"overall"`` (float32 tensors).

    Only covered kernels count, so that a structure that never prunes some
    kernels (the feed-forward layers under ``--structure=head``) reads its
    own target rather than a figure diluted by all-ones masks.
    """
    keys = list(masks if covered_keys is None else covered_keys)
    covered = {k: masks[k] for k in keys}
    overall = (overall_sparsity(covered) if covered
               else tf.constant(0.0, tf.float32))
    return {"overall": overall, **sparsity_per_key(covered)}
