"""Decoders that a checkpoint may carry beside its trunk, in one definition for the method
that trains them and the readout that reads them out.

PooDLe's spatial decoder module (SDM, Sec. 3 and App. A): per block a 2x upsampling, one
ResNet bottleneck g with an 8x channel reduction, and a 1x1 lateral conv lifting the skip
feature to the decoder channels, added after g (Eq. 3: z' = g(up(z)) + lateral(z_j)). For
ResNet-50: res5 (2048, /32) -> + res4 (1024 -> 2048, /16) -> + res3 (512 -> 2048, /8).
State-dict names (``laterals.i``, ``blocks.i.conv1..bn3``) are the checkpoint contract's;
the readout rebuilds the module from their shapes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .trunk import ShapeSpec


class Bottleneck(nn.Module):
    """torchvision's Bottleneck without stride or downsample: 1x1 -> 3x3 -> 1x1 + identity."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(x + self.bn3(self.conv3(y)))


class SpatialDecoder(nn.Module):
    skips = ("res4", "res3")

    def __init__(self, *, channels: int = 2048, lateral_channels=(1024, 512),
                 reduction: int = 8):
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in lateral_channels)
        self.blocks = nn.ModuleList(Bottleneck(channels, channels // reduction)
                                    for _ in lateral_channels)
        self.channels = channels

    @classmethod
    def for_trunk(cls, shapes: dict[str, ShapeSpec], *, reduction: int = 8) -> "SpatialDecoder":
        """The decoder over a trunk with these output shapes (``output_shape()``)."""
        return cls(channels=shapes["res5"].channels, reduction=reduction,
                   lateral_channels=tuple(shapes[s].channels for s in cls.skips))

    @classmethod
    def from_state_dict(cls, state: dict) -> "SpatialDecoder":
        n = len({k.split(".")[1] for k in state if k.startswith("laterals.")})
        if n == 0 or "blocks.0.conv1.weight" not in state:
            raise ValueError("not a spatial-decoder state dict (no laterals.* / blocks.*)")
        channels = state["laterals.0.weight"].shape[0]
        lateral = tuple(state[f"laterals.{i}.weight"].shape[1] for i in range(n))
        width = state["blocks.0.conv1.weight"].shape[0]
        return cls(channels=channels, lateral_channels=lateral, reduction=channels // width)

    def output_shape(self, backbone_shape: dict[str, ShapeSpec]) -> ShapeSpec:
        return ShapeSpec(self.channels, backbone_shape["res5"].stride // 2 ** len(self.blocks))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = features["res5"]
        for lateral, block, skip in zip(self.laterals, self.blocks, self.skips):
            s = features[skip]
            x = F.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=False)
            x = block(x) + lateral(s)  # PooDLe Eq. 3: z' = g(upsample(z)) + lateral(z_j)
        return x
