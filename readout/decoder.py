"""PooDLe's spatial decoder module (SDM), kept for the linear readout (PooDLe Sec. 4.1).

PooDLe App. A: two blocks, each a 2x upsampling, one ResNet bottleneck g with an 8x channel
reduction, and a 1x1 lateral conv that up-projects the skip feature to the decoder channels
(1024 -> 2048 from res4, then 512 -> 2048 from res3), added after g (Eq. 3:
z^(l+1) = g(upsample(z^(l))) + lateral(z^(j))). Output stride 32 -> 8.
Its configuration is read from the checkpoint's tensor shapes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import ShapeSpec


class _Bottleneck(nn.Module):
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
        self.blocks = nn.ModuleList(_Bottleneck(channels, channels // reduction)
                                    for _ in lateral_channels)
        self.channels = channels

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
