"""DS-CNN keyword spotter (Zhang et al. 2017, "Hello Edge") as a flat Keras model.

Layer names are an API (``{i}`` = block index from 0):

=======================  =====================================================
``stem_conv``            Conv2D(C0, 10x4, stride 2, same) + ReLU on [T, F, 1]
``block{i}_depthwise``   DepthwiseConv2D(3x3, same, no bias) + ReLU
``block{i}_pointwise``   Conv2D(C{i+1}, 1x1) + ReLU
``pool``                 global average pooling over time and frequency
``dropout``              `StatelessDropout` (reproducible in TFF's worker)
``head``                 Dense(num_classes): the class logits
=======================  =====================================================

Differences from the paper, for federated pruning: no BatchNorm (its moving
statistics are non-trainable, so federated averaging would never update
them) and no normalization across channels at all (a removed channel would
change the others' statistics); the depthwise conv has no bias, so a channel
whose producer column and bias are zero stays exactly 0 through ReLU,
depthwise and ReLU, and can be cut out (see `tasks.kws.compaction`).

Channel ``c`` of stream ``k`` (the output of ``stem_conv`` for ``k = 0``,
of ``block{k-1}_pointwise`` after) is one unit: that producer's column ``c``
and bias ``c``, depthwise channel ``c`` of block ``k`` and row ``c`` of
``block{k}_pointwise``, or of ``head`` for the last stream (`channel_streams`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import tensorflow as tf

from tasks.asr.model import StatelessDropout

STEM, HEAD = "stem_conv", "head"
# The head's columns are the classes: pruning one would silence a class.
EXCLUDE_LAYERS = r"^head$"
# name -> (channels, blocks); "small" is the paper's DS-CNN-S shape.
MODEL_PRESETS: dict[str, tuple[int, int]] = {
    "tiny": (16, 2),     # ~1.7k parameters: tests and smoke runs
    "small": (64, 4),    # ~22k
    "medium": (128, 5),  # ~95k
}


def depthwise_name(block: int) -> str:
    return f"block{block}_depthwise"


def pointwise_name(block: int) -> str:
    return f"block{block}_pointwise"


def channel_streams(num_blocks: int) -> list[tuple[str, Optional[str], str]]:
    """(producer, depthwise or None, consumer) of each channel stream, in model order."""
    producers = [STEM] + [pointwise_name(i) for i in range(num_blocks)]
    consumers = [pointwise_name(i) for i in range(num_blocks)] + [HEAD]
    depthwise = [depthwise_name(i) for i in range(num_blocks)] + [None]
    return list(zip(producers, depthwise, consumers))


@dataclasses.dataclass(frozen=True)
class DsCnnConfig:
    """DS-CNN hyper-parameters (input: [num_frames, num_mel_bins] log-mel)."""

    num_frames: int = 100
    num_mel_bins: int = 40
    num_classes: int = 12
    channels: int = 64
    num_blocks: int = 4
    stem_kernel: tuple[int, int] = (10, 4)
    stem_strides: tuple[int, int] = (2, 2)
    kernel_size: int = 3
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.channels < 1 or self.num_blocks < 0 or self.num_classes < 2:
            raise ValueError(f"bad DS-CNN config: {self}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "DsCnnConfig":
        """`MODEL_PRESETS[name]`'s widths with `overrides`."""
        if name not in MODEL_PRESETS:
            raise ValueError(f"unknown model size {name!r}; choose one of "
                             f"{', '.join(MODEL_PRESETS)}")
        channels, blocks = MODEL_PRESETS[name]
        return cls(**{"channels": channels, "num_blocks": blocks, **overrides})

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "DsCnnConfig":
        """Inverse of `dataclasses.asdict` after a JSON round trip (lists -> tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


@dataclasses.dataclass(frozen=True)
class DsCnnWidths:
    """Output channels of each stream's producer (`channel_streams` order)."""

    channels: tuple[int, ...]

    @classmethod
    def dense(cls, config: DsCnnConfig) -> "DsCnnWidths":
        return cls((config.channels,) * (config.num_blocks + 1))

    def to_json(self) -> dict:
        return {"channels": list(self.channels)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "DsCnnWidths":
        return cls(tuple(value["channels"]))


def build_ds_cnn(config: DsCnnConfig, widths: Optional[DsCnnWidths] = None) -> tf.keras.Model:
    """The DS-CNN; `widths` (default: dense) builds a compacted one, same layer names.

    Input ``features`` float32 [B, num_frames, num_mel_bins]; output logits
    float32 [B, num_classes].
    """
    L = tf.keras.layers
    cfg = config
    widths = widths or DsCnnWidths.dense(cfg)
    if len(widths.channels) != cfg.num_blocks + 1:
        raise ValueError(f"widths give {len(widths.channels)} streams, the config "
                         f"{cfg.num_blocks + 1}")
    features = tf.keras.Input(shape=(cfg.num_frames, cfg.num_mel_bins), name="features")
    x = L.Reshape((cfg.num_frames, cfg.num_mel_bins, 1), name="expand")(features)
    x = L.Conv2D(widths.channels[0], cfg.stem_kernel, strides=cfg.stem_strides,
                 padding="same", activation="relu", name=STEM)(x)
    for i in range(cfg.num_blocks):
        x = L.DepthwiseConv2D(cfg.kernel_size, padding="same", use_bias=False,
                              activation="relu", name=depthwise_name(i))(x)
        x = L.Conv2D(widths.channels[i + 1], 1, activation="relu", name=pointwise_name(i))(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    x = StatelessDropout(cfg.dropout, name="dropout")(x)
    logits = L.Dense(cfg.num_classes, name=HEAD)(x)
    return tf.keras.Model(inputs=features, outputs=logits, name="ds_cnn")
