"""Which weights of the DS-CNN are pruned together: the KWS task's `ModelStructure`.

Channel ``c`` of each stream (`tasks.kws.model.channel_streams`):

* producer (``stem_conv`` / ``block{i}_pointwise``) column ``c``  <->  consumer
  (``block{i+1}_pointwise`` / ``head``) row ``c``, directly: the depthwise conv
  between them is a per-channel pass-through, and it is never pruned (the
  library wraps only Dense and Conv2D), so pruning sees it as absent;
* when the depthwise kernel is among the shapes (compaction sees every layer):
  producer column ``c`` <-> depthwise channel ``c`` <-> consumer row ``c``.

The last stream reaches ``head`` through global average pooling, which keeps
channels apart, so it is coupled the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

from tasks.kws import model as model_lib
from tff_prune.pruning import units
from tff_prune.pruning.units import Coupling
from tff_prune.task import base

Shapes = Mapping[str, Sequence[int]]


def stream_couplings(shapes: Shapes, producer: str, depthwise: Optional[str],
                     consumer: str) -> list[Coupling]:
    """The couplings of one channel stream among the layers in `shapes`."""
    p, d, c = (units.kernel_shape(shapes, n) if n else None
               for n in (producer, depthwise, consumer))
    if p is None:
        return []
    channels = p[-1]
    for name, shape in ((consumer, c), (depthwise, d)):
        if shape is not None and shape[-2] != channels:
            raise ValueError(f"{name} has {shape[-2]} input channels, {producer} gives {channels}")
    couplings = []
    if c is not None:
        couplings.append(Coupling.identity(producer, consumer, channels))
    if d is not None:
        if d[-1] != 1:
            raise ValueError(f"{depthwise} has depth multiplier {d[-1]}; the DS-CNN uses 1")
        couplings.append(Coupling.identity(producer, depthwise, channels))
        if c is not None:
            couplings.append(Coupling.identity(depthwise, consumer, channels))
    return couplings


class DsCnnStructure(base.ModelStructure):
    """The DS-CNN's channel couplings; no attention heads."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks

    def conv_groups(self, shapes: Shapes) -> list[list[Coupling]]:
        groups = [stream_couplings(shapes, *stream)
                  for stream in model_lib.channel_streams(self.num_blocks)]
        return [g for g in groups if g]

    def couplings(self, shapes: Shapes) -> list[Coupling]:
        return [c for group in self.conv_groups(shapes) for c in group]
