"""Which weights of our Conformer-CTC are pruned together, from its layer names
(see tasks/asr/model.py): the ASR task's `ModelStructure`.

Couplings (all only between layers that are both prunable):

* ``block{i}_ff{1,2}_in`` column ``j``  <->  ``block{i}_ff{1,2}_out`` row ``j``
* ``block{i}_mhsa_value`` column ``j``  <->  ``block{i}_mhsa_output`` row ``j``
* ``block{i}_mhsa_query`` column ``j``  <->  ``block{i}_mhsa_key`` column ``j`` (q.k)
* conv module channel ``c``: ``conv_pointwise_in`` columns ``c`` and ``c + C``
  (GLU value and gate), ``conv_depthwise`` channel ``c``,
  ``conv_pointwise_out`` row ``c``
* ``subsample_conv1`` output channel ``c``  <->  ``subsample_conv2`` input channel ``c``
* ``subsample_conv2`` output channel ``c``  <->  ``subsample_dense`` rows ``f * C2 + c``
  for every frequency position ``f`` (the flatten; ``F' = rows / C2``)
"""

from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

import numpy as np

from tff_prune.pruning import structures
from tff_prune.pruning import units
from tff_prune.pruning.units import AttentionGroup, Coupling, UnitStructure
from tff_prune.task import base

_BLOCK = re.compile(r"^block(\d+)_")

Shapes = Mapping[str, Sequence[int]]


def _layers(shapes: Shapes) -> set[str]:
    return {key.rsplit("/", 1)[0] for key in shapes}


def conformer_weight_shapes(
    d_model: int,
    num_blocks: int,
    ff_dim: int,
    conv_channels: int,
    conv_kernel: int,
    freq_positions: int,
    subsample_channels: int,
    vocab_size: int,
    depthwise_rank: int = 4,
) -> dict[str, tuple[int, ...]]:
    """Kernel and bias shapes of our Conformer by layer name, in model order.

    ``freq_positions`` is ``F'``, the frequency size after the two
    subsampling convs (80 mels -> 39 -> 19 with valid 3x3 / stride 2), so
    ``subsample_dense`` has ``F' * subsample_channels`` rows.
    ``depthwise_rank`` 4 gives Keras ``DepthwiseConv2D((k, 1))``'s
    ``[k, 1, C, 1]`` (what tasks/asr/model.py builds), 3 a
    ``DepthwiseConv1D``'s ``[k, C, 1]``.
    """
    d, c2 = d_model, subsample_channels
    shapes: dict[str, tuple[int, ...]] = {}

    def dense(name, n_in, n_out):
        shapes[f"{name}/kernel"] = (n_in, n_out)
        shapes[f"{name}/bias"] = (n_out,)

    shapes["subsample_conv1/kernel"], shapes["subsample_conv1/bias"] = (3, 3, 1, c2), (c2,)
    shapes["subsample_conv2/kernel"], shapes["subsample_conv2/bias"] = (3, 3, c2, c2), (c2,)
    dense("subsample_dense", freq_positions * c2, d)
    dw_shape = (conv_kernel, 1, conv_channels, 1) if depthwise_rank == 4 else (conv_kernel, conv_channels, 1)
    for i in range(num_blocks):
        p = f"block{i}_"
        dense(p + "ff1_in", d, ff_dim)
        dense(p + "ff1_out", ff_dim, d)
        for proj in ("query", "key", "value", "output"):
            dense(p + f"mhsa_{proj}", d, d)
        dense(p + "conv_pointwise_in", d, 2 * conv_channels)
        shapes[p + "conv_depthwise/depthwise_kernel"] = dw_shape
        shapes[p + "conv_depthwise/bias"] = (conv_channels,)
        dense(p + "conv_pointwise_out", conv_channels, d)
        dense(p + "ff2_in", d, ff_dim)
        dense(p + "ff2_out", ff_dim, d)
    dense("ctc_output", d, vocab_size)
    return shapes


def block_indices(layer_names) -> list[int]:
    """Sorted indices ``i`` of the ``block{i}_*`` layers."""
    return sorted({int(m.group(1)) for name in layer_names if (m := _BLOCK.match(name))})


def _both(shapes: Shapes, a: str, b: str) -> bool:
    return units.kernel_shape(shapes, a) is not None and units.kernel_shape(shapes, b) is not None


def conv_groups(shapes: Shapes) -> list[list[Coupling]]:
    """Couplings of each convolution pipeline: the subsampling and every conv module."""
    layers = _layers(shapes)
    groups = []
    c1, c2, dense = "subsample_conv1", "subsample_conv2", "subsample_dense"
    sub = []
    if _both(shapes, c1, c2):
        sub.append(Coupling.identity(c1, c2, units.kernel_shape(shapes, c1)[-1]))
    if _both(shapes, c2, dense):
        channels = units.kernel_shape(shapes, c2)[-1]
        rows = units.kernel_shape(shapes, dense)[0]
        if rows % channels:
            raise ValueError(f"{dense} has {rows} rows, not a multiple of {c2}'s {channels} channels")
        sub.append(Coupling.flatten(c2, dense, channels, rows // channels))
    if sub:
        groups.append(sub)
    for i in block_indices(layers):
        pw_in, dw, pw_out = (f"block{i}_conv_pointwise_in", f"block{i}_conv_depthwise",
                             f"block{i}_conv_pointwise_out")
        group = []
        if units.kernel_shape(shapes, pw_in) is not None:
            width = units.kernel_shape(shapes, pw_in)[-1]
            if width % 2:
                raise ValueError(f"{pw_in} has {width} columns; GLU needs an even number")
            channels = width // 2
            group.append(Coupling.glu_pairs(pw_in, channels))
            if units.kernel_shape(shapes, dw) is not None:
                if units.kernel_shape(shapes, dw)[-2] != channels:
                    raise ValueError(f"{dw} has {units.kernel_shape(shapes, dw)[-2]} channels, GLU gives {channels}")
                group.append(Coupling(pw_in, dw, np.arange(width),
                                      np.tile(np.arange(channels), 2)))
        if _both(shapes, dw, pw_out):
            dw_shape = units.kernel_shape(shapes, dw)
            group.append(Coupling.identity(dw, pw_out, dw_shape[-2] * dw_shape[-1]))
        elif _both(shapes, pw_in, pw_out) and units.kernel_shape(shapes, dw) is None:
            # No depthwise weights at all: GLU channel c feeds pointwise_out row c directly.
            channels = units.kernel_shape(shapes, pw_in)[-1] // 2
            group.append(Coupling(pw_in, pw_out, np.arange(2 * channels),
                                  np.tile(np.arange(channels), 2)))
        if group:
            groups.append(group)
    return groups


def attention_groups(shapes: Shapes, num_heads: int) -> list[AttentionGroup]:
    """One AttentionGroup per block that has all four projections."""
    groups = []
    for i in block_indices(_layers(shapes)):
        names = [f"block{i}_mhsa_{p}" for p in ("query", "key", "value", "output")]
        if all(units.kernel_shape(shapes, n) is not None for n in names):
            groups.append(AttentionGroup(*names, num_heads=num_heads))
    return groups


def conformer_couplings(shapes: Shapes) -> list[Coupling]:
    """All couplings used by the column and row structures."""
    couplings = []
    for i in block_indices(_layers(shapes)):
        for ff in ("ff1", "ff2"):
            a, b = f"block{i}_{ff}_in", f"block{i}_{ff}_out"
            if _both(shapes, a, b):
                couplings.append(Coupling.identity(a, b, units.kernel_shape(shapes, a)[-1]))
        q, k, v, o = (f"block{i}_mhsa_{p}" for p in ("query", "key", "value", "output"))
        if _both(shapes, v, o):
            couplings.append(Coupling.identity(v, o, units.kernel_shape(shapes, v)[-1]))
        if _both(shapes, q, k):
            couplings.append(Coupling.same_columns(q, k, units.kernel_shape(shapes, q)[-1]))
    for group in conv_groups(shapes):
        couplings.extend(group)
    return couplings


class ConformerStructure(base.ModelStructure):
    """The Conformer's couplings, attention heads and conv pipelines."""

    def __init__(self, num_heads: int):
        self.num_heads = num_heads

    def couplings(self, shapes: Shapes) -> list[Coupling]:
        return conformer_couplings(shapes)

    def attention_groups(self, shapes: Shapes) -> list[AttentionGroup]:
        return attention_groups(shapes, self.num_heads)

    def conv_groups(self, shapes: Shapes) -> list[list[Coupling]]:
        return conv_groups(shapes)


def build_unit_structure(
    weight_shapes: Shapes,
    scheme: str,
    structure: Optional[str],
    prunable_layers: Sequence[str],
    num_heads: int,
    block_shape: Sequence[int] = (1, 4),
) -> UnitStructure:
    """`structures.build_unit_structure` for our Conformer with `num_heads` heads."""
    return structures.build_unit_structure(
        weight_shapes, scheme, structure, prunable_layers,
        ConformerStructure(num_heads), block_shape)
