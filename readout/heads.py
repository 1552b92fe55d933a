"""Segmentation readout heads, registered by name and built from the backbone's output
shapes. Each head states the backbone it needs (dilation, multigrid, decoder use).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.decoders import c2_xavier_fill

from .backbone import ShapeSpec
from .registry import Registry

HEADS = Registry("head")
register_head = HEADS.register
get_head_class = HEADS.get_class
RETRIEVAL_HEADS = Registry("retrieval head")  # nothing trains: a memory bank is filled
register_retrieval_head = RETRIEVAL_HEADS.register


def find_head_class(name: str) -> type:
    """A trained head or a retrieval head by name; an unknown name lists both."""
    for table in (HEADS, RETRIEVAL_HEADS):
        if name in table:
            return table[name]
    raise KeyError(f"unknown head {name!r}; known heads: {', '.join(sorted(HEADS))}; "
                   f"retrieval heads: {', '.join(sorted(RETRIEVAL_HEADS))}")


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ReadoutHead(nn.Module):
    """Base: ``forward(features) -> {"out": logits[, "aux": logits]}`` at feature stride."""

    dilation: tuple[bool, bool, bool] = (False, False, False)
    multigrid: tuple[int, ...] | None = None
    uses_decoder = False  # read the PooDLe decoder's output ("sdm") when present
    aux_weight = 0.0

    @classmethod
    def check_options(cls, options: dict, crop: tuple[int, int] | None = None) -> None:
        """Raise ValueError for option values the constructor would refuse, or that do not
        fit the protocol's training `crop` (suites are validated before any work starts)."""

    @classmethod
    def output_stride(cls) -> int:
        """The stride of res5 in the trunk this head asks for."""
        return 32 // 2 ** sum(cls.dilation)


@register_head("deeplab_v1")
class DeepLabV1Head(ReadoutHead):
    """FlowE Sec. 4.2 "standard header": dilated ResNet at output stride 8 and a single
    1x1 conv classifier; logits are upsampled bilinearly. With a PooDLe decoder the
    undilated trunk + decoder give the stride-8 feature instead (PooDLe Sec. 4.1)."""

    dilation = (False, True, True)
    uses_decoder = True
    NORMS = ("none", "batchnorm")

    @classmethod
    def check_options(cls, options: dict, crop=None) -> None:
        if options.get("norm", "none") not in cls.NORMS:
            raise ValueError(f"deeplab_v1 norm {options['norm']!r}: one of "
                             f"{', '.join(cls.NORMS)}")

    def __init__(self, *, input_shape: dict[str, ShapeSpec], num_classes: int,
                 in_feature: str = "res5", norm: str = "none"):
        """``norm="batchnorm"``: a BatchNorm without affine parameters before the classifier
        (MAE App. A.2 linear probing; DINOv2's linear segmentation ``BNHead``), so that the
        probe does not depend on the feature magnitude, which differs by orders of
        magnitude between methods; "none" is FlowE's header."""
        super().__init__()
        self.check_options({"norm": norm})
        self.in_feature = in_feature
        channels = input_shape[in_feature].channels
        self.norm = nn.BatchNorm2d(channels, affine=False) if norm == "batchnorm" else None
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features):
        x = features[self.in_feature]
        return {"out": self.classifier(x if self.norm is None else self.norm(x))}


@register_head("linear_1x1")
class PiCOLinearHead(DeepLabV1Head):
    """PiCO's linear probe (Sec. 4.1, App. A.2.1, after VADeR): a 1x1 conv on the output at
    1/4 resolution, logits upsampled 4x, softmax cross-entropy. Encoder-decoder models are
    read at their decoder's output (PiCO's FPN: stride 4); a plain backbone (MoCo-v2) is
    dilated to stride 4: every strided stage from res3 on dilates instead, the dilation
    doubling per stage (App. A.2.1)."""

    dilation = (True, True, True)


class ASPP(nn.Module):
    """detectron2's ASPP (detectron2/layers/aspp.py): a 1x1 and three 3x3 atrous conv-BN-ReLU
    branches, image pooling (average pooling, then a 1x1 conv with bias and ReLU, no BN,
    resized back), a 1x1 conv-BN-ReLU projection and dropout. ``pool_kernel`` None pools
    globally; (h, w) averages windows of that size with stride 1, as the DeepLab project
    sets it to the train crop / 16: global at train time, local windows on larger test
    images. A window larger than the feature map is an error, as detectron2's ASPP refuses
    it (the suite's crop and kernel are checked against each other before a run)."""

    def __init__(self, cin: int, channels: int, rates, *, pool_kernel=None,
                 dropout: float = 0.1):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(cin, channels, 1)] + [
            nn.Sequential(nn.Conv2d(cin, channels, 3, padding=r, dilation=r, bias=False),
                          nn.BatchNorm2d(channels), nn.ReLU(inplace=True)) for r in rates])
        self.pool_kernel = tuple(pool_kernel) if pool_kernel else None
        self.pool_conv = nn.Conv2d(cin, channels, 1)
        self.project = _conv_bn_relu((len(rates) + 2) * channels, channels, 1)
        self.dropout = nn.Dropout(dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                c2_xavier_fill(m)

    def forward(self, x):
        size = x.shape[-2:]
        if self.pool_kernel is None:
            pooled = F.adaptive_avg_pool2d(x, 1)
        else:
            if any(k > n for k, n in zip(self.pool_kernel, size)):
                raise ValueError(f"ASPP image pooling: pool_kernel {list(self.pool_kernel)} is "
                                 f"larger than the {size[0]}x{size[1]} feature map of this "
                                 f"input; set head_options.pool_kernel to at most the map "
                                 f"(the suite's crop / 16), or null to pool globally")
            pooled = F.avg_pool2d(x, self.pool_kernel, stride=1)
        pooled = F.interpolate(F.relu(self.pool_conv(pooled)), size=size, mode="bilinear",
                               align_corners=False)
        out = torch.cat([b(x) for b in self.branches] + [pooled], dim=1)
        return self.dropout(self.project(out))


@register_head("deeplab_v3")
class DeepLabV3Head(ReadoutHead):
    """PixPro-flow Table 3 with the authors' detectron2 DeepLab v3 project
    (rioyokotalab/detectron2 dev-v0.6 projects/DeepLab/deeplab/semantic_seg.py
    DeepLabV3Head): res5 dilated (output stride 16) with multigrid (1, 2, 4), detectron2's
    ASPP with 256 channels, rates 6/12/18, image pooling over ``pool_kernel`` feature
    pixels (train crop / 16), dropout 0.1, then a 1x1 predictor initialised N(0, 0.001)."""

    dilation = (False, False, True)
    multigrid = (1, 2, 4)

    @classmethod
    def check_options(cls, options: dict, crop=None) -> None:
        kernel = options.get("pool_kernel")
        if kernel is not None and not (isinstance(kernel, (list, tuple)) and len(kernel) == 2
                                       and all(isinstance(k, int) and k >= 1 for k in kernel)):
            raise ValueError(f"deeplab_v3 pool_kernel {kernel!r}: [h, w] in feature pixels "
                             f"(the train crop / 16), or null for global pooling")
        if kernel is not None and crop is not None:
            stride = cls.output_stride()
            size = [-(-int(c) // stride) for c in crop]
            if any(k > n for k, n in zip(kernel, size)):
                raise ValueError(f"pool_kernel {list(kernel)} is larger than the {size[0]}x"
                                 f"{size[1]} feature map of the {crop[0]}x{crop[1]} training "
                                 f"crop (protocol.crop) at output stride {stride}: set it to "
                                 f"at most {size} (detectron2's ASPP refuses a larger one)")

    def __init__(self, *, input_shape: dict[str, ShapeSpec], num_classes: int,
                 channels: int = 256, rates=(6, 12, 18), dropout: float = 0.1,
                 pool_kernel=None):
        super().__init__()
        self.check_options({"pool_kernel": pool_kernel})
        self.aspp = ASPP(input_shape["res5"].channels, channels, list(rates),
                         pool_kernel=pool_kernel, dropout=dropout)
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, features):
        return {"out": self.predictor(self.aspp(features["res5"]))}


class _PPM(nn.Module):
    def __init__(self, cin: int, channels: int, scales):
        super().__init__()
        self.stages = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s),
                                                  _conv_bn_relu(cin, channels, 1))
                                    for s in scales)

    def forward(self, x):
        size = x.shape[-2:]
        return [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False)
                for stage in self.stages]


def mmseg_init(head: nn.Module, classifiers) -> None:
    """mmsegmentation's initialisation of a decode head (mmcv ConvModule.init_weights:
    kaiming_init, i.e. kaiming normal with mode fan_out for ReLU, bias 0, norms weight 1 /
    bias 0; BaseDecodeHead init_cfg Normal(std=0.01) on conv_seg, bias 0)."""
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for conv in classifiers:
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)


@register_head("upernet")
class UperNetHead(ReadoutHead):
    """UperNet as mmsegmentation's UPerHead for ResNet-50: PPM (1, 2, 3, 6) on C5, FPN
    over C2-C5 with 512 channels, fused 3x3 conv, dropout 0.1; auxiliary FCN head on C4
    (256 channels, one 3x3 conv, dropout 0.1) with loss weight 0.4. ``init="mmseg"``
    initialises as mmsegmentation does (``mmseg_init``), ``"pytorch"`` keeps PyTorch's
    defaults (this suite's before issue 28)."""

    aux_weight = 0.4
    INITS = ("mmseg", "pytorch")

    @classmethod
    def check_options(cls, options: dict, crop=None) -> None:
        if options.get("init", "mmseg") not in cls.INITS:
            raise ValueError(f"upernet init {options['init']!r}: one of {', '.join(cls.INITS)}")

    def __init__(self, *, input_shape: dict[str, ShapeSpec], num_classes: int,
                 channels: int = 512, pool_scales=(1, 2, 3, 6), dropout: float = 0.1,
                 aux_channels: int = 256, init: str = "mmseg"):
        super().__init__()
        self.check_options({"init": init})
        names = ("res2", "res3", "res4", "res5")
        cin = [input_shape[n].channels for n in names]
        self.ppm = _PPM(cin[-1], channels, pool_scales)
        self.bottleneck = _conv_bn_relu(cin[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral = nn.ModuleList(_conv_bn_relu(c, channels, 1) for c in cin[:-1])
        self.fpn = nn.ModuleList(_conv_bn_relu(channels, channels, 3) for _ in cin[:-1])
        self.fuse = _conv_bn_relu(len(names) * channels, channels, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout),
                                        nn.Conv2d(channels, num_classes, 1))
        self.aux = nn.Sequential(_conv_bn_relu(cin[2], aux_channels, 3), nn.Dropout2d(dropout),
                                 nn.Conv2d(aux_channels, num_classes, 1))
        self.names = names
        if init == "mmseg":
            mmseg_init(self, (self.classifier[-1], self.aux[-1]))

    def forward(self, features):
        c = [features[n] for n in self.names]
        top = self.bottleneck(torch.cat([c[-1], *self.ppm(c[-1])], 1))
        laterals = [conv(x) for conv, x in zip(self.lateral, c[:-1])] + [top]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear",
                align_corners=False)
        outs = [conv(x) for conv, x in zip(self.fpn, laterals[:-1])] + [top]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False)
                            for o in outs[1:]]
        result = {"out": self.classifier(self.fuse(torch.cat(outs, 1)))}
        if self.training:
            result["aux"] = self.aux(c[2])
        return result
