"""Decoders that a checkpoint may carry beside its trunk, in one definition for the method
that trains them and the readout that reads them out.

PooDLe's spatial decoder module (SDM, Sec. 3 and App. A): per level one ResNet bottleneck g
with an 8x channel reduction, a 2x bilinear upsampling and a 1x1 lateral conv lifting the
skip feature to the decoder channels. Two orders, with the same parameters:

- ``"authors"`` (default): z' = up(g(z)) + lateral(z_j), g at the coarse level, as the
  authors' code computes it (agentic-learning-ai-lab/poodle ``src/models/poodle.py``,
  ``Poodle.forward``: ``decoder_blocks[i]`` -> ``F.interpolate(scale_factor=2)`` ->
  ``+ decoder_laterals[i](...)``); it produced the published numbers;
- ``"paper"``: z' = g(up(z)) + lateral(z_j), the reading of the paper's Eq. 3 text.

The two differ by about 17 % (relative L2 of the output) on the same weights, so the order
travels with the weights: a checkpoint's decoder entry says which one it was trained with
(entries written before the key existed were trained with ``"paper"``).
For ResNet-50: res5 (2048, /32) -> + res4 (1024 -> 2048, /16) -> + res3 (512 -> 2048, /8).
State-dict names (``laterals.i``, ``blocks.i.conv1..bn3``) are the checkpoint contract's;
the readout rebuilds the module from their shapes.

PiCO's decoder (Sec. 3.4: a dense 128-d map at 1/4 resolution) is the semantic branch of
Panoptic FPN (Kirillov et al. 2019, Sec. 3), as detectron2 builds it (``FPN`` in
modeling/backbone/fpn.py, ``SemSegFPNHead`` in modeling/meta_arch/semantic_seg.py, the
default config PiCO App. A.2 starts from): an FPN over res2-res5 (1x1 laterals and 3x3
outputs to 256 channels, nearest 2x top-down sum, Caffe2 Xavier init), then per level
3x3 conv-GroupNorm(32)-ReLU stages with 2x bilinear upsampling down to stride 4 (one conv
for P2), summed; no predictor (the checkpoint's "fpn" decoder ends at the 128-d map).

``DECODERS`` maps a checkpoint decoder entry's ``kind`` to its class; the readout names the
decoder's output feature by that kind.
"""
from __future__ import annotations

import math

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


DECODER_ORDERS = ("authors", "paper")
ORDER_BEFORE_THE_KEY = "paper"  # decoder entries without "order" were trained this way


class SpatialDecoder(nn.Module):
    skips = ("res4", "res3")

    def __init__(self, *, channels: int = 2048, lateral_channels=(1024, 512),
                 reduction: int = 8, order: str = "authors"):
        super().__init__()
        if order not in DECODER_ORDERS:
            raise ValueError(f"decoder order {order!r}: one of {', '.join(DECODER_ORDERS)}")
        self.order = order
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in lateral_channels)
        self.blocks = nn.ModuleList(Bottleneck(channels, channels // reduction)
                                    for _ in lateral_channels)
        self.channels = channels

    @classmethod
    def for_trunk(cls, shapes: dict[str, ShapeSpec], *, reduction: int = 8,
                  order: str = "authors") -> "SpatialDecoder":
        """The decoder over a trunk with these output shapes (``output_shape()``)."""
        return cls(channels=shapes["res5"].channels, reduction=reduction, order=order,
                   lateral_channels=tuple(shapes[s].channels for s in cls.skips))

    def checkpoint_entry(self) -> dict:
        """The checkpoint's decoder entry: kind, order and weights."""
        return {"kind": "sdm", "order": self.order,
                "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}}

    @classmethod
    def from_checkpoint_entry(cls, entry: dict) -> "SpatialDecoder":
        """The module a decoder entry describes (shapes and order); the caller loads the
        weights (the readout with its exact-key check)."""
        if entry.get("kind") != "sdm":
            raise ValueError(f"unknown decoder kind {entry.get('kind')!r}; known: sdm")
        return cls.from_state_dict(entry["state_dict"],
                                   order=entry.get("order", ORDER_BEFORE_THE_KEY))

    @classmethod
    def from_state_dict(cls, state: dict, *, order: str = "authors") -> "SpatialDecoder":
        n = len({k.split(".")[1] for k in state if k.startswith("laterals.")})
        if n == 0 or "blocks.0.conv1.weight" not in state:
            raise ValueError("not a spatial-decoder state dict (no laterals.* / blocks.*)")
        channels = state["laterals.0.weight"].shape[0]
        lateral = tuple(state[f"laterals.{i}.weight"].shape[1] for i in range(n))
        width = state["blocks.0.conv1.weight"].shape[0]
        return cls(channels=channels, lateral_channels=lateral, reduction=channels // width,
                   order=order)

    def output_shape(self, backbone_shape: dict[str, ShapeSpec]) -> ShapeSpec:
        return ShapeSpec(self.channels, backbone_shape["res5"].stride // 2 ** len(self.blocks))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = features["res5"]
        for lateral, block, skip in zip(self.laterals, self.blocks, self.skips):
            s = features[skip]
            if self.order == "authors":  # z' = up(g(z)) + lateral(z_j)
                x = F.interpolate(block(x), size=s.shape[-2:], mode="bilinear",
                                  align_corners=False)
            else:  # Eq. 3 text: z' = g(up(z)) + lateral(z_j)
                x = block(F.interpolate(x, size=s.shape[-2:], mode="bilinear",
                                        align_corners=False))
            x = x + lateral(s)
        return x


def c2_xavier_fill(conv: nn.Conv2d) -> nn.Conv2d:
    """detectron2 ``c2_xavier_fill``: Caffe2's XavierFill (kaiming uniform, a = 1), bias 0."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class SemanticFPN(nn.Module):
    """FPN + Panoptic FPN semantic branch -> [B, conv_dims, H/4, W/4] (see module docs)."""
    levels = ("res2", "res3", "res4", "res5")

    def __init__(self, *, in_channels=(256, 512, 1024, 2048), in_strides=(4, 8, 16, 32),
                 fpn_channels: int = 256, conv_dims: int = 128, common_stride: int = 4):
        super().__init__()
        if len(in_channels) != len(self.levels) or len(in_strides) != len(self.levels):
            raise ValueError(f"SemanticFPN reads {', '.join(self.levels)}")
        self.strides = tuple(int(s) for s in in_strides)
        self.common_stride, self.channels = common_stride, conv_dims
        self.laterals = nn.ModuleList(c2_xavier_fill(nn.Conv2d(c, fpn_channels, 1))
                                      for c in in_channels)
        self.outputs = nn.ModuleList(c2_xavier_fill(nn.Conv2d(fpn_channels, fpn_channels, 3,
                                                               padding=1))
                                     for _ in in_channels)
        self.scale_heads = nn.ModuleList()
        for stride in self.strides:
            n = max(1, round(math.log2(stride) - math.log2(common_stride)))
            layers = []
            for k in range(n):
                conv = nn.Conv2d(fpn_channels if k == 0 else conv_dims, conv_dims, 3,
                                 padding=1, bias=False)
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                layers += [conv, nn.GroupNorm(32, conv_dims), nn.ReLU(inplace=True)]
                if stride != common_stride:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear",
                                              align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))

    @classmethod
    def for_trunk(cls, shapes: dict[str, ShapeSpec], **kw) -> "SemanticFPN":
        return cls(in_channels=tuple(shapes[s].channels for s in cls.levels),
                   in_strides=tuple(shapes[s].stride for s in cls.levels), **kw)

    def checkpoint_entry(self) -> dict:
        return {"kind": "fpn", "strides": list(self.strides),
                "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}}

    @classmethod
    def from_checkpoint_entry(cls, entry: dict) -> "SemanticFPN":
        state = entry["state_dict"]
        if "laterals.3.weight" not in state or "scale_heads.0.0.weight" not in state:
            raise ValueError("not a semantic-FPN state dict (no laterals.* / scale_heads.*)")
        return cls(in_channels=tuple(state[f"laterals.{i}.weight"].shape[1] for i in range(4)),
                   in_strides=tuple(entry.get("strides", (4, 8, 16, 32))),
                   fpn_channels=state["laterals.0.weight"].shape[0],
                   conv_dims=state["scale_heads.0.0.weight"].shape[0])

    def output_shape(self, backbone_shape: dict[str, ShapeSpec]) -> ShapeSpec:
        return ShapeSpec(self.channels, self.common_stride)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        xs = [features[name] for name in self.levels]
        top = self.laterals[-1](xs[-1])
        pyramid = [self.outputs[-1](top)]
        for i in range(len(xs) - 2, -1, -1):  # detectron2 FPN: nearest 2x, then add
            # to the lateral's size: the same as 2x where detectron2 pads the image to a
            # multiple of 32, and defined for any image size (whole-image evaluation)
            lateral = self.laterals[i](xs[i])
            top = F.interpolate(top, size=lateral.shape[-2:], mode="nearest") + lateral
            pyramid.insert(0, self.outputs[i](top))
        out = self.scale_heads[0](pyramid[0])
        for head, p in zip(self.scale_heads[1:], pyramid[1:]):
            y = head(p)
            out = out + (y if y.shape[-2:] == out.shape[-2:] else
                         F.interpolate(y, size=out.shape[-2:], mode="bilinear",
                                       align_corners=False))
        return out


DECODERS = {"sdm": SpatialDecoder, "fpn": SemanticFPN}


def decoder_from_entry(entry: dict) -> nn.Module:
    """The module a checkpoint's decoder entry describes (weights not loaded: the caller
    loads them with its exact-key check). An unknown kind lists the known ones."""
    kind = entry.get("kind")
    if kind not in DECODERS:
        raise ValueError(f"unknown decoder kind {kind!r}; known: {', '.join(DECODERS)}")
    return DECODERS[kind].from_checkpoint_entry(entry)
