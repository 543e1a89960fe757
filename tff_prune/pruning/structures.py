"""A pruning method's `UnitStructure` on a model, from the task's declared couplings."""

from __future__ import annotations

from typing import Optional, Protocol, Sequence

from tff_prune.pruning import units
from tff_prune.pruning.units import UnitStructure

SCHEMES = ("unstructured", "structured", "block")
STRUCTURES = ("column", "row", "half_column", "half_row", "head", "channel")
Shapes = units.Shapes


class DeclaredSlices(Protocol):
    """Which weight slices a model prunes together, as its task declares them.

    `tff_prune.task.base.ModelStructure` implements it; the mask math needs
    only these three answers, so it does not depend on the task interface.
    """

    def couplings(self, shapes: Shapes) -> Sequence[units.Coupling]: ...

    def attention_groups(self, shapes: Shapes) -> Sequence[units.AttentionGroup]: ...

    def conv_groups(self, shapes: Shapes) -> Sequence[Sequence[units.Coupling]]: ...


def build_unit_structure(
    weight_shapes: Shapes,
    scheme: str,
    structure: Optional[str],
    prunable_layers: Sequence[str],
    model_structure: DeclaredSlices,
    block_shape: Sequence[int] = (1, 4),
) -> UnitStructure:
    """The UnitStructure for ``scheme`` (and ``structure`` when structured).

    ``model_structure`` (the task's) says which slices are pruned together.

    ``head`` and ``channel`` cover only attention / convolution layers; other
    prunable kernels stay dense and are not part of the measured sparsity
    (``UnitStructure.kernel_keys`` lists the covered kernels). ``m_by_n`` is
    not a partition into units: use ``masks.compute_m_by_n_masks``.
    """
    prunable = units.layer_names(prunable_layers)
    missing = [n for n in prunable if units.kernel_shape(weight_shapes, n) is None]
    if missing:
        raise ValueError(f"prunable layers without a kernel in the weight shapes: {missing}")
    if scheme == "m_by_n":
        raise ValueError("m_by_n is not a unit structure; use masks.compute_m_by_n_masks")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES} (or m_by_n), got {scheme!r}")
    if scheme == "unstructured":
        return units.unstructured(weight_shapes, prunable)
    if scheme == "block":
        return units.blocks(weight_shapes, prunable, block_shape)
    if structure not in STRUCTURES:
        raise ValueError(f"structured pruning needs structure in {STRUCTURES}, got {structure!r}")
    if structure == "column":
        return units.columns(weight_shapes, prunable, model_structure.couplings(weight_shapes))
    if structure == "row":
        return units.rows(weight_shapes, prunable, model_structure.couplings(weight_shapes))
    if structure == "half_column":
        return units.half_columns(weight_shapes, prunable)
    if structure == "half_row":
        return units.half_rows(weight_shapes, prunable)
    if structure == "head":
        result = units.heads(
            weight_shapes, model_structure.attention_groups(weight_shapes), prunable)
    else:
        result = units.channels(weight_shapes, model_structure.conv_groups(weight_shapes), prunable)
    if not result.num_units:
        raise ValueError(f"structure {structure!r} found nothing to prune among {prunable}")
    return result
