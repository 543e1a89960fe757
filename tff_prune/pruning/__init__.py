"""Pure-TensorFlow mask math for federated pruning (no TFF imports), and its config.

Modules, one concept each:

* ``schedule``: sparsity and mask-update rounds over federated rounds.
* ``units``: ``UnitStructure``, the partition of weights into prunable units.
* ``structures``: a scheme's ``UnitStructure`` from a task's ``ModelStructure``.
* ``importance``: per-element scores (magnitude, Taylor).
* ``masks``: unit scoring, sparsity allocation, masks, 2:4 masks.
* ``votes``: the ``client_vote`` policy (masks from averaged client masks).
* ``stats``: sparsity and size statistics.
* ``config``: what to prune and who decides (`PruningConfig`), validated.

Imports nothing else of `tff_prune`: a task's structure reaches it as
`structures.DeclaredSlices`.
"""

from tff_prune.pruning.importance import magnitude_scores, taylor_scores
from tff_prune.pruning.masks import apply_masks, compute_m_by_n_masks, compute_masks, unit_keep
from tff_prune.pruning.schedule import PruningSchedule
from tff_prune.pruning.structures import build_unit_structure
from tff_prune.pruning.units import UnitStructure
from tff_prune.pruning.votes import mask_agreement, masks_from_votes

__all__ = [
    "PruningSchedule",
    "UnitStructure",
    "apply_masks",
    "build_unit_structure",
    "compute_m_by_n_masks",
    "compute_masks",
    "magnitude_scores",
    "mask_agreement",
    "masks_from_votes",
    "taylor_scores",
    "unit_keep",
]
