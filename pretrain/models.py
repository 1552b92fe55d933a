"""Networks of the pretraining methods: a torchvision ResNet encoder (dilated to output
stride 8 for FlowE), BYOL's pooled MLP heads and their dense 1x1-conv versions (FlowE
Sec. 3.3, PooDLe App. A: 4096 hidden, 256 out)."""
from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

STAGES = {"layer1": "res2", "layer2": "res3", "layer3": "res4", "layer4": "res5"}
DILATION = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}


def dilate_stages(net: nn.Module, dilated: tuple[bool, bool, bool]) -> None:
    """Trade the stride of res3..res5 for dilation (rates 2, 4): torchvision's
    ``replace_stride_with_dilation``, which its BasicBlock (ResNet-18/34) refuses."""
    rate = 1
    for layer, on in zip((net.layer2, net.layer3, net.layer4), dilated):
        if not on:
            continue
        rate *= 2
        convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
        for conv in convs:
            conv.stride = (1, 1)
            if conv.kernel_size == (3, 3):
                conv.dilation = conv.padding = (rate, rate)


class Encoder(nn.Module):
    """ResNet trunk -> {"res2": ..., "res5": ...}. State-dict keys are torchvision's under
    ``body.`` (``backbone_state_dict()`` strips it: the checkpoint contract's names)."""

    def __init__(self, *, arch: str = "resnet50", output_stride: int = 32):
        super().__init__()
        if output_stride not in DILATION:
            raise ValueError(f"output_stride {output_stride}: one of {sorted(DILATION)}")
        net = getattr(torchvision.models, arch)(weights=None)
        dilate_stages(net, DILATION[output_stride])
        self.arch, self.output_stride = arch, output_stride
        self.body = IntermediateLayerGetter(net, STAGES)
        self.channels = {name: [m for m in getattr(net, layer).modules()  # its last BN
                                if isinstance(m, nn.BatchNorm2d)][-1].num_features
                         for layer, name in STAGES.items()}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(self.body(x))

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


class SpatialDecoder(nn.Module):
    """PooDLe's spatial decoder module (SDM, Sec. 3 and App. A): per block a 2x upsampling,
    one ResNet bottleneck g with an 8x channel reduction, and a 1x1 lateral conv lifting the
    skip feature to the decoder channels, added after g (Eq. 3: z' = g(up(z)) + lateral(z_j)).
    For ResNet-50: res5 (2048, /32) -> + res4 (1024 -> 2048, /16) -> + res3 (512 -> 2048, /8).

    State-dict names (``laterals.i``, ``blocks.i.conv1..bn3``) are the checkpoint contract's
    decoder names, which the linear readout rebuilds from tensor shapes.
    """
    skips = ("res4", "res3")

    def __init__(self, *, channels: int, lateral_channels: tuple[int, ...], reduction: int = 8):
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in lateral_channels)
        # torchvision's Bottleneck: width = planes * base_width / 64, output planes * 4
        self.blocks = nn.ModuleList(
            torchvision.models.resnet.Bottleneck(channels, channels // 4,
                                                 base_width=256 // reduction)
            for _ in lateral_channels)
        self.channels = channels

    @classmethod
    def for_encoder(cls, encoder: Encoder, *, reduction: int = 8) -> "SpatialDecoder":
        return cls(channels=encoder.channels["res5"], reduction=reduction,
                   lateral_channels=tuple(encoder.channels[s] for s in cls.skips))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = features["res5"]
        for lateral, block, skip in zip(self.laterals, self.blocks, self.skips):
            s = features[skip]
            x = block(nn.functional.interpolate(x, size=s.shape[-2:], mode="bilinear",
                                                align_corners=False)) + lateral(s)
        return x
