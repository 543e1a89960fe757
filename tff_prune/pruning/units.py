"""Prunable units: which weight elements are removed together.

Every pruning scheme is described by a :class:`UnitStructure`: per weight key
an int32 array of the weight's shape giving the unit of each element (``-1``:
in no unit, never masked), plus per unit its budget layer, its "anchor" group
and its kernel-parameter count. The arrays are built once in numpy; masks are
then computed with vectorized TF ops (``unsorted_segment_sum`` to score units,
``tf.gather`` to expand the kept units back to elements), see ``masks.py``.

Weights are keyed ``"{layer}/{var}"`` with var in ``kernel``, ``bias``,
``depthwise_kernel``. Each layer is viewed as a matrix of *rows* (inputs) and
*columns* (outputs):

* Dense ``[in, out]``: row ``i``, column ``j``; bias ``[out]`` is column-wise.
* Conv2D ``[kh, kw, in, out]``: row = input channel, column = output channel.
* Depthwise ``[..., C, M]`` (``[k, C, 1]`` for a 1-D depthwise conv over
  time, ``[k, 1, C, 1]`` for Keras ``DepthwiseConv2D((k, 1))``): row = input
  channel ``c``, column = output channel ``c * M + m``. Input channel ``c``
  only feeds its own output channels, so a depthwise row and its columns are
  always the same unit (the layer is a pass-through for couplings).

Overlapping units. Couplings chain (conv1 -> conv2 -> dense) and a coupled
consumer may have units of its own (``ff_out`` rows belong to ``ff_in``'s
hidden units while ``ff_out``'s columns are units too). An element can
therefore belong to at most two units: ``unit_ids[key]`` holds its *primary*
unit (the unit of its own column for column/channel/head structures, of its
own row for row structures) and ``shared_unit_ids[key]`` (only for keys that
need it) the second one, ``-1`` elsewhere. An element is kept iff all its
units are kept. ``unit_ids`` alone is a partition of every covered kernel.
Budget accounting is exact under overlaps (``masks.py`` counts each removed
element once), and every unit's budget layer contains all kernels it touches.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

KERNEL_VARS = ("kernel", "depthwise_kernel")
Shapes = Mapping[str, Sequence[int]]


# ----------------------------------------------------------------------------- structure


@dataclasses.dataclass(eq=False)
class UnitStructure:
    """A pruning structure: element -> unit maps plus per-unit bookkeeping.

    Attributes:
      name: Human-readable scheme name, e.g. ``"structured/column"``.
      unit_ids: ``{key: int32 array of the weight's shape}``, primary unit per
        element, ``-1`` for none. Only keys with at least one unit appear.
      shared_unit_ids: ``{key: int32 array}``, the second unit of elements
        that belong to two units (``-1`` elsewhere); usually empty.
      kernel_keys: Kernels (``kernel`` and ``depthwise_kernel`` weights) covered
        by the structure; sparsity is measured on
        exactly these (biases may be masked but are never counted).
      unit_layer: ``int32 [U]``, budget layer of each unit (index into
        ``layer_names``). ``uniform`` allocation prunes each budget layer to
        the target on its own.
      unit_group: ``int32 [U]``, the unit's anchor (kernel and side that
        define it); at least one unit per group is always kept, so no layer
        is ever removed completely.
      layer_names: Name of each budget layer (kernels joined with ``+``).
      unit_param_count: ``int64 [U]``, kernel elements in each unit (an
        element shared by two units counts for both).
      unit_size: ``int64 [U]``, all member elements (kernel and bias), the
        denominator of the mean unit score.
      layer_param_count: ``int64 [L]``, kernel elements per budget layer
        (each element once).
    """

    name: str
    unit_ids: dict[str, np.ndarray]
    shared_unit_ids: dict[str, np.ndarray]
    kernel_keys: tuple[str, ...]
    unit_layer: np.ndarray
    unit_group: np.ndarray
    layer_names: tuple[str, ...]
    unit_param_count: np.ndarray
    unit_size: np.ndarray
    layer_param_count: np.ndarray

    @property
    def num_units(self) -> int:
        return int(self.unit_layer.shape[0])

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    @property
    def num_groups(self) -> int:
        return int(self.unit_group.max()) + 1 if self.num_units else 0

    @property
    def total_params(self) -> int:
        """Kernel elements covered (the denominator of the measured sparsity)."""
        return int(self.layer_param_count.sum())

    def memberships(self, key: str) -> list[np.ndarray]:
        """The unit-id arrays of ``key``: ``[primary]`` or ``[primary, shared]``."""
        ids = [self.unit_ids[key]]
        if key in self.shared_unit_ids:
            ids.append(self.shared_unit_ids[key])
        return ids

    def describe(self) -> str:
        return (f"{self.name}: {self.num_units} units in {self.num_layers} budget layers, "
                f"{len(self.kernel_keys)} kernels, {self.total_params} kernel params")

    def __repr__(self) -> str:
        return f"UnitStructure({self.describe()})"


def _finalize(name: str, unit_ids: dict, shared: dict, kernel_keys: Sequence[str],
              unit_anchor: np.ndarray) -> UnitStructure:
    """Derive budget layers, groups and counts from element -> unit maps."""
    num_units = int(unit_anchor.shape[0])
    kernel_keys = tuple(kernel_keys)
    for key in unit_ids:
        unit_ids[key] = np.ascontiguousarray(unit_ids[key], dtype=np.int32)
    shared = {k: np.ascontiguousarray(v, dtype=np.int32) for k, v in shared.items() if (v >= 0).any()}

    def members(key):
        return [unit_ids[key]] + ([shared[key]] if key in shared else [])

    # Budget layers: kernels connected through units (graph units <-> kernels).
    rows, cols = [], []
    for k_index, key in enumerate(kernel_keys):
        for ids in members(key):
            touched = np.unique(ids[ids >= 0])
            rows.append(touched)
            cols.append(np.full(touched.shape, num_units + k_index))
    rows_a = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    cols_a = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    n_nodes = num_units + len(kernel_keys)
    graph = scipy.sparse.coo_matrix((np.ones(rows_a.shape[0]), (rows_a, cols_a)), shape=(n_nodes, n_nodes))
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    kernel_labels = labels[num_units:]
    # Number budget layers in order of their first kernel (model order).
    order = {}
    for lab in kernel_labels:
        order.setdefault(int(lab), len(order))
    layer_names = [[] for _ in order]
    for key, lab in zip(kernel_keys, kernel_labels):
        layer_names[order[int(lab)]].append(key.rsplit("/", 1)[0])
    layer_of_label = np.full(int(labels.max()) + 1 if n_nodes else 0, -1, np.int64)
    for lab, index in order.items():
        layer_of_label[lab] = index
    unit_layer = layer_of_label[labels[:num_units]].astype(np.int32)
    if num_units and (unit_layer < 0).any():
        raise ValueError(f"{name}: some units contain no kernel element")

    def count(keys):  # one bincount over all memberships (fast for millions of units)
        ids = [a[a >= 0] for key in keys for a in members(key)]
        flat = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        return np.bincount(flat, minlength=num_units).astype(np.int64)

    unit_param_count = count(kernel_keys)
    unit_size = count(list(unit_ids))
    layer_param_count = np.zeros(len(order), np.int64)
    for key, lab in zip(kernel_keys, kernel_labels):
        layer_param_count[order[int(lab)]] += unit_ids[key].size
    _, unit_group = np.unique(unit_anchor, return_inverse=True)
    return UnitStructure(
        name=name, unit_ids=unit_ids, shared_unit_ids=shared, kernel_keys=kernel_keys,
        unit_layer=unit_layer, unit_group=unit_group.astype(np.int32).reshape(-1),
        layer_names=tuple("+".join(n) for n in layer_names), unit_param_count=unit_param_count,
        unit_size=unit_size, layer_param_count=layer_param_count)


# ----------------------------------------------------------------------------- layers


@dataclasses.dataclass(frozen=True)
class LayerView:
    """A prunable layer seen as rows (inputs) x columns (outputs)."""

    name: str
    kernel_key: str
    bias_key: Optional[str]
    kernel_shape: tuple[int, ...]
    depthwise: bool

    @property
    def num_rows(self) -> int:
        return int(self.kernel_shape[-2])

    @property
    def num_cols(self) -> int:
        if self.depthwise:
            return int(self.kernel_shape[-2] * self.kernel_shape[-1])
        return int(self.kernel_shape[-1])

    def row_index(self) -> np.ndarray:
        """Row (input channel) of every kernel element, kernel-shaped."""
        shape = self.kernel_shape
        idx = np.arange(shape[-2]).reshape([1] * (len(shape) - 2) + [shape[-2], 1])
        return np.broadcast_to(idx, shape)

    def col_index(self) -> np.ndarray:
        """Column (output channel) of every kernel element, kernel-shaped."""
        shape = self.kernel_shape
        if self.depthwise:
            c = np.arange(shape[-2]).reshape(-1, 1) * shape[-1] + np.arange(shape[-1]).reshape(1, -1)
            return np.broadcast_to(c.reshape([1] * (len(shape) - 2) + list(shape[-2:])), shape)
        return np.broadcast_to(np.arange(shape[-1]).reshape([1] * (len(shape) - 1) + [-1]), shape)

    def matrix_shape(self) -> tuple[int, int]:
        """The 2-D view used by block / half patterns: ``[prod(others), out]``.

        Dense ``[in, out]``; Conv2D ``[kh*kw*in, out]``; depthwise
        ``[prod(spatial), C*M]``. A row-major reshape, so the view maps back
        with ``reshape(kernel_shape)``.
        """
        size = int(np.prod(self.kernel_shape))
        return size // self.num_cols, self.num_cols


def kernel_shape(shapes: Shapes, layer: str) -> Optional[tuple[int, ...]]:
    """The shape of `layer`'s kernel (or depthwise kernel) in `shapes`; None if absent."""
    for var in KERNEL_VARS:
        if f"{layer}/{var}" in shapes:
            return tuple(int(s) for s in shapes[f"{layer}/{var}"])
    return None


def layer_names(prunable: Sequence[str]) -> list[str]:
    """Layer names of ``prunable`` entries (layer names or ``layer/var`` keys), deduplicated."""
    names = []
    for entry in prunable:
        layer = entry.rsplit("/", 1)[0] if "/" in entry else entry
        if layer not in names:
            names.append(layer)
    return names


def layer_views(shapes: Shapes, prunable: Sequence[str]) -> list[LayerView]:
    """LayerViews for ``prunable`` (layer names or kernel keys), in the given order."""
    views = []
    for layer in layer_names(prunable):
        found = [v for v in KERNEL_VARS if f"{layer}/{v}" in shapes]
        if not found:
            raise ValueError(f"prunable layer {layer!r} has no kernel in the weight shapes")
        var = found[0]
        shape = tuple(int(s) for s in shapes[f"{layer}/{var}"])
        depthwise = var == "depthwise_kernel"
        if depthwise and len(shape) < 3:
            raise ValueError(f"{layer}/{var}: depthwise kernel must be [..., C, M], got {shape}")
        if not depthwise and len(shape) not in (2, 4):
            raise ValueError(f"{layer}/{var}: kernel must be Dense [in, out] or Conv2D "
                             f"[kh, kw, in, out], got {shape}")
        bias = f"{layer}/bias" if f"{layer}/bias" in shapes else None
        views.append(LayerView(layer, f"{layer}/{var}", bias, shape, depthwise))
    return views


# ----------------------------------------------------------------------------- couplings


@dataclasses.dataclass(frozen=True, eq=False)
class Coupling:
    """Slice ``a_index[i]`` (``a_side`` of layer ``a``) is one unit with slice
    ``b_index[i]`` (``b_side`` of layer ``b``), for every ``i``.

    The usual case is producer column ``j`` <-> consumer row ``j``; sides and
    index maps express GLU halves, flattening and the query/key pairing.
    """

    a: str
    b: str
    a_index: np.ndarray
    b_index: np.ndarray
    a_side: str = "col"
    b_side: str = "row"

    def __post_init__(self):
        if self.a_side not in ("row", "col") or self.b_side not in ("row", "col"):
            raise ValueError(f"coupling sides must be 'row' or 'col', got {self.a_side}, {self.b_side}")
        if np.shape(self.a_index) != np.shape(self.b_index):
            raise ValueError(f"coupling {self.a}->{self.b}: index maps differ in length")

    @classmethod
    def identity(cls, producer: str, consumer: str, n: int) -> "Coupling":
        """Producer column ``j`` feeds consumer row ``j``."""
        return cls(producer, consumer, np.arange(n), np.arange(n))

    @classmethod
    def same_columns(cls, a: str, b: str, n: int) -> "Coupling":
        """Column ``j`` of ``a`` and column ``j`` of ``b`` (query/key: the q.k dimension)."""
        return cls(a, b, np.arange(n), np.arange(n), "col", "col")

    @classmethod
    def glu_pairs(cls, layer: str, channels: int) -> "Coupling":
        """Columns ``c`` and ``c + channels`` of one layer feed GLU channel ``c``."""
        return cls(layer, layer, np.arange(channels), np.arange(channels) + channels, "col", "col")

    @classmethod
    def flatten(cls, producer: str, consumer: str, channels: int, positions: int) -> "Coupling":
        """Producer channel ``c`` feeds consumer rows ``f * channels + c`` for every ``f``."""
        c = np.tile(np.arange(channels), positions)
        return cls(producer, consumer, c, np.arange(channels * positions))


def _slice_graph(views: Sequence[LayerView], couplings: Sequence[Coupling]):
    """Connected components of row/column slices linked by couplings.

    Returns (labels, offsets) with offsets[name] = (col_offset, row_offset).
    """
    offsets, n = {}, 0
    for v in views:
        offsets[v.name] = (n, n + v.num_cols)
        n += v.num_cols + v.num_rows
    by_name = {v.name: v for v in views}
    src, dst = [], []
    for v in views:
        if v.depthwise:  # input channel c is the same unit as its output channels
            col_off, row_off = offsets[v.name]
            mult = v.kernel_shape[-1]
            src.append(row_off + np.repeat(np.arange(v.num_rows), mult))
            dst.append(col_off + np.arange(v.num_cols))
    for c in couplings:
        if c.a not in by_name or c.b not in by_name:
            continue  # only couplings between two prunable layers are active
        for layer, side, index in ((c.a, c.a_side, c.a_index), (c.b, c.b_side, c.b_index)):
            limit = by_name[layer].num_cols if side == "col" else by_name[layer].num_rows
            if np.size(index) and (np.min(index) < 0 or np.max(index) >= limit):
                raise ValueError(f"coupling {c.a}->{c.b}: {side} index out of range for {layer}")
        a_off = offsets[c.a][0 if c.a_side == "col" else 1]
        b_off = offsets[c.b][0 if c.b_side == "col" else 1]
        src.append(a_off + np.asarray(c.a_index))
        dst.append(b_off + np.asarray(c.b_index))
    src_a = np.concatenate(src) if src else np.zeros(0, np.int64)
    dst_a = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    graph = scipy.sparse.coo_matrix((np.ones(src_a.shape[0]), (src_a, dst_a)), shape=(n, n))
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    return labels, offsets, n


def _coupled(shapes: Shapes, prunable: Sequence[str], couplings: Sequence[Coupling], mode: str,
             name: str) -> UnitStructure:
    """Units from slice components. mode: 'col' | 'row' | 'internal'."""
    views = layer_views(shapes, prunable)
    labels, offsets, n = _slice_graph(views, couplings)
    n_labels = int(labels.max()) + 1 if n else 0
    is_col = np.zeros(n, bool)
    node_layer = np.zeros(n, np.int64)
    for i, v in enumerate(views):
        col_off, row_off = offsets[v.name]
        is_col[col_off:row_off] = True
        node_layer[col_off:row_off + v.num_rows] = i
    has_col = np.bincount(labels[is_col], minlength=n_labels) > 0
    has_row = np.bincount(labels[~is_col], minlength=n_labels) > 0
    size = np.bincount(labels, minlength=n_labels)
    is_unit = {"col": has_col, "row": has_row, "internal": size >= 2}[mode]
    # Number units by their first node (layer order, columns before rows).
    first_node = np.full(n_labels, n, np.int64)
    np.minimum.at(first_node, labels, np.arange(n))
    unit_labels = np.flatnonzero(is_unit)
    unit_labels = unit_labels[np.argsort(first_node[unit_labels], kind="stable")]
    unit_of_label = np.full(n_labels, -1, np.int64)
    unit_of_label[unit_labels] = np.arange(unit_labels.shape[0])
    # Anchor: first layer with a slice on the defining side (rows for 'row').
    prefer_col = mode != "row"
    penalty = np.where(is_col == prefer_col, 0, len(views))
    code = penalty + node_layer
    anchor_of_label = np.full(n_labels, 2 * len(views) + 1, np.int64)
    np.minimum.at(anchor_of_label, labels, code)
    # Codes differ for the row and the column side of one layer, so row- and
    # column-anchored units of a layer are separate groups.
    anchor = anchor_of_label[unit_labels]

    unit_ids, shared, kernel_keys = {}, {}, []
    for v in views:
        col_off, row_off = offsets[v.name]
        col_unit = unit_of_label[labels[col_off + v.col_index()]]
        row_unit = unit_of_label[labels[row_off + v.row_index()]]
        own, other = (row_unit, col_unit) if mode == "row" else (col_unit, row_unit)
        primary = np.where(own >= 0, own, other)
        second = np.where((own >= 0) & (other >= 0) & (other != own), other, -1)
        if (primary >= 0).any():
            unit_ids[v.kernel_key] = primary
            kernel_keys.append(v.kernel_key)
            if (second >= 0).any():
                shared[v.kernel_key] = second
        if v.bias_key is not None:
            bias_unit = unit_of_label[labels[col_off + np.arange(v.num_cols)]]
            if (bias_unit >= 0).any():
                unit_ids[v.bias_key] = bias_unit
    return _finalize(name, unit_ids, shared, kernel_keys, anchor)


# ----------------------------------------------------------------------------- constructors


def unstructured(shapes: Shapes, prunable_kernels: Sequence[str]) -> UnitStructure:
    """Every kernel element is its own unit (budget layer = its kernel)."""
    views = layer_views(shapes, prunable_kernels)
    unit_ids, anchors, offset = {}, [], 0
    for i, v in enumerate(views):
        size = int(np.prod(v.kernel_shape))
        unit_ids[v.kernel_key] = (offset + np.arange(size)).reshape(v.kernel_shape)
        anchors.append(np.full(size, i))
        offset += size
    anchor = np.concatenate(anchors) if anchors else np.zeros(0, np.int64)
    return _finalize("unstructured", unit_ids, {}, [v.kernel_key for v in views], anchor)


def _matrix_units(shapes: Shapes, prunable: Sequence[str], name: str, unit_fn) -> UnitStructure:
    """Units defined on each kernel's 2-D view by ``unit_fn(rows, cols) -> raw ids``."""
    views = layer_views(shapes, prunable)
    unit_ids, anchors, offset = {}, [], 0
    for i, v in enumerate(views):
        rows, cols = v.matrix_shape()
        raw = unit_fn(rows, cols)
        # Renumber densely (drops empty halves, e.g. of a single-row kernel).
        _, dense = np.unique(raw.ravel(), return_inverse=True)
        count = int(dense.max()) + 1
        unit_ids[v.kernel_key] = (offset + dense).reshape(v.kernel_shape)
        anchors.append(np.full(count, i))
        offset += count
    anchor = np.concatenate(anchors) if anchors else np.zeros(0, np.int64)
    return _finalize(name, unit_ids, {}, [v.kernel_key for v in views], anchor)


def blocks(shapes: Shapes, prunable: Sequence[str], block_shape: Sequence[int] = (1, 4)) -> UnitStructure:
    """tfmot-style block sparsity: ``block_shape = (rows, cols)`` tiles of the 2-D view.

    Blocks start at element ``(0, 0)``; edge blocks may be partial. Scored by
    the mean |score| of their elements, which is tfmot's default ``AVG``
    ``factorized_pool`` (TF average pooling ignores padding). Note: tfmot
    pools with ``'SAME'`` padding, which centres partial windows, but lays its
    mask out from ``(0, 0)``; both agree whenever the padding of a dimension
    is at most one element. We always score the block we mask.
    """
    br, bc = (int(b) for b in block_shape)
    if br < 1 or bc < 1:
        raise ValueError(f"block_shape must be positive, got {tuple(block_shape)}")

    def fn(rows, cols):
        n_block_cols = -(-cols // bc)
        r = np.arange(rows).reshape(-1, 1) // br
        c = np.arange(cols).reshape(1, -1) // bc
        return r * n_block_cols + c

    return _matrix_units(shapes, prunable, f"block{br}x{bc}", fn)


def half_columns(shapes: Shapes, prunable: Sequence[str]) -> UnitStructure:
    """Each column of the 2-D view split into its first and second half (first half
    gets the extra element for odd lengths); no coupling, biases untouched."""

    def fn(rows, cols):
        half = (np.arange(rows) >= -(-rows // 2)).astype(np.int64).reshape(-1, 1)
        return np.arange(cols).reshape(1, -1) * 2 + half

    return _matrix_units(shapes, prunable, "structured/half_column", fn)


def half_rows(shapes: Shapes, prunable: Sequence[str]) -> UnitStructure:
    """Each row of the 2-D view split into its first and second half; no coupling."""

    def fn(rows, cols):
        half = (np.arange(cols) >= -(-cols // 2)).astype(np.int64).reshape(1, -1)
        return np.arange(rows).reshape(-1, 1) * 2 + half

    return _matrix_units(shapes, prunable, "structured/half_row", fn)


def columns(shapes: Shapes, prunable: Sequence[str], couplings: Sequence[Coupling] = ()) -> UnitStructure:
    """Output units. Rule (couplings are active only between prunable layers):

    Slices linked by couplings form components. Every component that contains
    a column slice is one unit: its columns, their bias elements and the
    coupled consumer rows (e.g. ``ff_in`` column ``j`` + bias ``j`` +
    ``ff_out`` row ``j``; ``query`` column ``j`` + ``key`` column ``j``; a GLU
    channel with its depthwise channel and ``pointwise_out`` row). Columns
    whose outputs are not coupled (residual stream, model output) are units
    on their own with their bias element. Rows not coupled to any column
    (inputs from the residual stream) are in no column unit.
    """
    return _coupled(shapes, prunable, couplings, "col", "structured/column")


def rows(shapes: Shapes, prunable: Sequence[str], couplings: Sequence[Coupling] = ()) -> UnitStructure:
    """Input units, mirroring :func:`columns`.

    Every component that contains a row slice is one unit. Where the rows are
    a coupled internal dimension the unit also holds the producer's columns
    and bias elements (``ff_out`` row ``j`` + ``ff_in`` column ``j`` + bias
    ``j``); uncoupled rows (from the residual stream or the features) are
    units on their own. Column-only components (query/key pairs, residual
    outputs) are in no row unit and their biases are never masked.
    """
    return _coupled(shapes, prunable, couplings, "row", "structured/row")


@dataclasses.dataclass(frozen=True)
class AttentionGroup:
    """One multi-head attention block: head ``h`` owns columns ``h*dh:(h+1)*dh``
    of query/key/value and rows ``h*dh:(h+1)*dh`` of output."""

    query: str
    key: str
    value: str
    output: str
    num_heads: int


def heads(shapes: Shapes, attention_groups: Sequence[AttentionGroup],
          prunable: Optional[Sequence[str]] = None) -> UnitStructure:
    """One unit per attention head: Q, K, V columns + biases and O rows of the head.

    Members not in ``prunable`` (when given) are left out of the units.
    """
    allowed = None if prunable is None else layer_names(prunable)
    couplings, layers = [], []
    for g in attention_groups:
        members = [(g.query, "col"), (g.key, "col"), (g.value, "col"), (g.output, "row")]
        members = [(m, s) for m, s in members
                   if (allowed is None or m in allowed) and any(f"{m}/{v}" in shapes for v in KERNEL_VARS)]
        if not members:
            continue
        first_layer, first_side = members[0]
        views = {v.name: v for v in layer_views(shapes, [m for m, _ in members])}
        width = views[first_layer].num_cols if first_side == "col" else views[first_layer].num_rows
        if width % g.num_heads:
            raise ValueError(f"{first_layer}: width {width} not divisible by num_heads={g.num_heads}")
        head_dim = width // g.num_heads
        head_start = (np.arange(width) // head_dim) * head_dim
        for layer, side in members:
            v = views[layer]
            if (v.num_cols if side == "col" else v.num_rows) != width:
                raise ValueError(f"{layer}: {side} width differs from {first_layer}'s {width}")
            couplings.append(Coupling(layer, first_layer, np.arange(width), head_start, side, first_side))
        layers.extend(m for m, _ in members)
    return _coupled(shapes, layers, couplings, "internal", "structured/head")


def channels(shapes: Shapes, conv_groups: Sequence[Sequence[Coupling]],
             prunable: Optional[Sequence[str]] = None) -> UnitStructure:
    """Convolution channels: each component of coupled slices is one unit.

    ``conv_groups`` lists the couplings of each convolution pipeline (see
    a task's ``ModelStructure.conv_groups``). Only internal (coupled) dimensions are
    units; the pipeline's residual-facing rows and columns are never masked.
    Chained channels (conv1 -> conv2 -> dense) overlap in the middle kernel.
    """
    allowed = None if prunable is None else layer_names(prunable)
    couplings = [c for group in conv_groups for c in group]
    layers = []
    for c in couplings:
        for layer in (c.a, c.b):
            if layer not in layers and (allowed is None or layer in allowed):
                layers.append(layer)
    if allowed is not None:  # model order, for stable unit numbering
        layers.sort(key=allowed.index)
    return _coupled(shapes, layers, couplings, "internal", "structured/channel")
