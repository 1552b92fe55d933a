"""The ResNet trunk that pretraining trains and readouts read out, in one definition:
torchvision's ResNet (its state-dict names are the checkpoint contract's), returning
``{"res2": C2, ..., "res5": C5}``, with stages optionally dilated instead of strided and
its output shapes stated (detectron2's ``Backbone.output_shape()``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
STAGES = ("res2", "res3", "res4", "res5")
_LAYERS = dict(zip(STAGES, ("layer1", "layer2", "layer3", "layer4")))
# output stride -> which of res3, res4, res5 are dilated instead of strided
DILATION_FOR_STRIDE = {32: (False, False, False), 16: (False, False, True),
                       8: (False, True, True)}


@dataclass(frozen=True)
class ShapeSpec:
    channels: int
    stride: int


def _dilate(layer: nn.Sequential, rates: list[int]) -> None:
    """Remove the stage's stride and dilate its 3x3 convs (detectron2 style: every block of
    the stage, including the first, uses its rate; parameters are unchanged)."""
    for block, rate in zip(layer, rates):
        for conv in block.modules():
            if isinstance(conv, nn.Conv2d):
                if conv.stride == (2, 2):
                    conv.stride = (1, 1)
                if conv.kernel_size == (3, 3):
                    conv.dilation, conv.padding = (rate, rate), (rate, rate)


class ResNetBackbone(nn.Module):
    """torchvision ResNet trunk returning ``{"res2": C2, ..., "res5": C5}``.

    ``dilation`` (res3, res4, res5) removes those stages' strides (rates 2, 4, ... over the
    dilated stages), as torchvision's ``replace_stride_with_dilation`` does for res3..res5
    (ResNet-18/34 included); ``multigrid`` multiplies the res5 rates per block (DeepLab v3,
    e.g. (1, 2, 4)).
    """

    def __init__(self, *, arch: str = "resnet50",
                 dilation: tuple[bool, bool, bool] = (False, False, False),
                 multigrid: tuple[int, ...] | None = None):
        super().__init__()
        if arch not in ARCHS:
            raise KeyError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
        net = getattr(torchvision.models, arch)(weights=None)
        self.arch = arch
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4)
        expansion = 4 if arch in ("resnet50", "resnet101") else 1
        stride, rate = 4, 1
        self._shapes = {"res2": ShapeSpec(64 * expansion, 4)}
        for i, (name, dilated) in enumerate(zip(STAGES[1:], dilation)):
            layer = getattr(self, _LAYERS[name])
            if dilated:
                rate *= 2
                grid = tuple(multigrid) if (name == "res5" and multigrid) else (1,) * len(layer)
                if len(grid) < len(layer):
                    raise ValueError(f"multigrid {grid} needs {len(layer)} entries for {arch}")
                grid = grid[:len(layer)]  # ResNet-18/34 (smoke runs) have 2 res5 blocks
                _dilate(layer, [rate * g for g in grid])
            else:
                stride *= 2
            self._shapes[name] = ShapeSpec(64 * expansion * 2 ** (i + 1), stride)
        self.frozen = False

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for name in self._shapes:
            x = getattr(self, _LAYERS[name])(x)
            out[name] = x
        return out

    def split_off(self, stage: str) -> nn.Sequential:
        """Remove the last stage from the trunk and return it (the trunk then ends one
        stage earlier): Faster R-CNN C4 runs res5 per region as its box head."""
        if stage != list(self._shapes)[-1]:
            raise ValueError(f"only the last stage ({list(self._shapes)[-1]}) can be split off")
        layer = getattr(self, _LAYERS[stage])
        delattr(self, _LAYERS[stage])
        del self._shapes[stage]
        return layer

    def freeze(self) -> "ResNetBackbone":
        """No gradients, BatchNorm in eval mode for good (``train()`` keeps it so)."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.frozen = True
        return self.train(False)

    def train(self, mode: bool = True):
        return super().train(False if self.frozen else mode)
