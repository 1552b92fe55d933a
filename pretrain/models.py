"""Networks of the pretraining methods: the shared ResNet trunk as an encoder (dilated to
output stride 8 for FlowE), BYOL's pooled MLP heads and their dense 1x1-conv versions
(FlowE Sec. 3.3, PooDLe App. A: 4096 hidden, 256 out). PooDLe's decoder: core.decoders."""
from __future__ import annotations

import torch
from torch import nn

from core.inputs import normalize
from core.trunk import DILATION_FOR_STRIDE, ResNetBackbone


class Encoder(nn.Module):
    """The shared ResNet trunk (core.trunk) at an output stride of 32, 16 or 8: views, RGB in
    [0, 1] after their photometric augmentations, are normalised to the suite's input
    convention (core.inputs, what every readout feeds) -> {"res2": ..., "res5": ...}.
    State-dict keys are torchvision's under ``body.`` (``backbone_state_dict()`` strips it:
    the checkpoint contract's names)."""

    def __init__(self, *, arch: str = "resnet50", output_stride: int = 32):
        super().__init__()
        if output_stride not in DILATION_FOR_STRIDE:
            raise ValueError(f"output_stride {output_stride}: one of "
                             f"{sorted(DILATION_FOR_STRIDE)}")
        self.arch, self.output_stride = arch, output_stride
        self.body = ResNetBackbone(arch=arch, dilation=DILATION_FOR_STRIDE[output_stride])
        self.channels = {name: spec.channels for name, spec in self.body.output_shape().items()}

    def output_shape(self):
        return self.body.output_shape()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: views [N, 3, H, W], RGB in [0, 1]."""
        return self.body(normalize(x))

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        return {k[len("body."):]: v.detach().cpu().clone() for k, v in self.state_dict().items()}


def mlp(in_dim: int, hidden: int = 4096, out: int = 256, *, dense: bool = False) -> nn.Sequential:
    """BYOL's projector / predictor: linear -> BN -> ReLU -> linear; with ``dense`` the
    linear layers are 1x1 convolutions (FlowE Sec. 3.3: no extra parameters)."""
    if dense:
        return nn.Sequential(nn.Conv2d(in_dim, hidden, 1), nn.BatchNorm2d(hidden),
                             nn.ReLU(inplace=True), nn.Conv2d(hidden, out, 1))
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, out))
