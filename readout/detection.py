"""Faster R-CNN readouts on a frozen backbone (FlowE Sec. 4.2 "standard" and "heavier"
readout headers; PooDLe Table 1 "Det C4 / FPN"), assembled from torchvision's detection
parts in detectron2's configuration and registered by name.

- ``faster_rcnn_c4`` (FlowE's standard header, the R-C4 model of He et al.): RPN on res4
  (stride 16, anchors 32-512 x ratios 0.5/1/2), RoIAlign 14x14 on res4, the checkpoint's
  res5 as box head (its stride-2 first block, then mean pooling) and two linear layers.
  The whole ResNet is frozen, res5 included: only the RPN and the two linear layers train
  ("a small convnet RPN and two linear layers", FlowE Sec. 4.2).
- ``faster_rcnn_fpn`` (the heavier header, mAP-dagger): frozen ResNet; trainable FPN
  (P2-P6, 256 channels), RPN (one anchor size per level) and 2x1024 FC box head.

Both pool with detectron2's ROIAlignV2 (aligned=True, adaptive sampling) and use its RPN
and ROI sampling / NMS settings.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from core.runtime import autocast

from .backbone import ResNetBackbone, ShapeSpec, build_backbone
from .registry import Registry
from .transforms import to_tensor

DETECTORS = Registry("detector")
register_detector = DETECTORS.register
get_detector_class = DETECTORS.get_class

ASPECT_RATIOS = (0.5, 1.0, 2.0)


class AlignedRoIPooler(MultiScaleRoIAlign):
    """RoIAlign with ``aligned=True`` (detectron2's ROIAlignV2; torchvision's own pooler
    uses the half-pixel-shifted aligned=False) over one or more levels whose strides are
    given by the backbone instead of guessed from feature sizes. A box of side
    s = sqrt(area) goes to level floor(4 + log2(s / 224)), clamped (FPN paper Eq. 1)."""

    def __init__(self, *, featmap_names: list[str], strides: list[int], output_size: int,
                 sampling_ratio: int = 0):
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.strides = list(strides)
        self.levels = [int(math.log2(s)) for s in self.strides]

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        feats = [x[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], 1)
                          for i, b in enumerate(boxes)])
        if len(feats) == 1:
            return roi_align(feats[0], rois, self.output_size, 1.0 / self.strides[0],
                             self.sampling_ratio, aligned=True)
        side = ((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])).clamp(min=0).sqrt()
        level = torch.floor(4 + torch.log2(side / 224 + 1e-8))
        level = level.clamp(self.levels[0], self.levels[-1]).long() - self.levels[0]
        out = feats[0].new_zeros((len(rois), feats[0].shape[1], *self.output_size))
        for i, (feat, stride) in enumerate(zip(feats, self.strides)):
            idx = torch.nonzero(level == i).squeeze(1)
            out[idx] = roi_align(feat, rois[idx], self.output_size, 1.0 / stride,
                                 self.sampling_ratio, aligned=True).to(out.dtype)
        return out


class DetectionBackbone(nn.Module):
    """What torchvision's GeneralizedRCNN asks of a backbone: ``out_channels`` and an
    ordered dict of feature maps. The frozen trunk's maps (through a trainable FPN when
    ``fpn_channels`` is set) come out in fp32 even under autocast, so that anchors and
    proposals are computed in fp32 (bf16 cannot hold a 1280-px coordinate to a pixel)."""

    def __init__(self, *, trunk: ResNetBackbone, features: tuple[str, ...],
                 fpn_channels: int | None = None):
        super().__init__()
        self.trunk, self.features = trunk, tuple(features)
        shapes = trunk.output_shape()
        self.fpn = None
        if fpn_channels:
            self.fpn = FeaturePyramidNetwork([shapes[f].channels for f in self.features],
                                             fpn_channels, extra_blocks=LastLevelMaxPool())
            strides = [shapes[f].stride for f in self.features]
            strides.append(strides[-1] * 2)  # P6: stride-2 max pool of P5 (detectron2)
            self._shapes = {f"p{int(math.log2(s))}": ShapeSpec(fpn_channels, s)
                            for s in strides}
        else:
            self._shapes = {f: shapes[f] for f in self.features}
        channels = {s.channels for s in self._shapes.values()}
        if len(channels) != 1:
            raise ValueError(f"RPN needs one channel count over levels, got {self._shapes}")
        self.out_channels = channels.pop()

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward(self, images: torch.Tensor) -> OrderedDict:
        feats = self.trunk(images)
        feats = OrderedDict((f, feats[f]) for f in self.features)
        if self.fpn is not None:
            feats = OrderedDict(zip(self._shapes, self.fpn(feats).values()))
        return OrderedDict((k, v.float()) for k, v in feats.items())


class Res5BoxHead(nn.Module):
    """detectron2 Res5ROIHeads' box head: the checkpoint's res5 run on every 14x14 region
    (its first block has stride 2, giving 7x7), then mean pooling -> [R, C5]. Frozen:
    weights as in the checkpoint and BatchNorm in eval mode whatever ``train()`` says."""

    def __init__(self, *, res5: nn.Sequential):
        super().__init__()
        self.res5 = res5
        for p in self.res5.parameters():
            p.requires_grad_(False)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        return self.res5(regions).mean(dim=(2, 3)).float()

    def train(self, mode: bool = True):
        return super().train(False)


class FloatRPNHead(RPNHead):
    """torchvision's RPN head (3x3 conv + ReLU, 1x1 objectness and box deltas, normal(0.01)
    init: detectron2's StandardRPNHead) with fp32 outputs, so proposals decode in fp32."""

    def forward(self, x):
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class FloatBoxPredictor(FastRCNNPredictor):
    """The two linear layers: ``cls_score`` (K + 1 with background) and class-specific
    ``bbox_pred`` (4K), detectron2's init (normal std 0.01 / 0.001, zero bias), run in fp32
    even under autocast (deltas decoded from bf16 would be off by pixels)."""

    def __init__(self, *, in_channels: int, num_classes: int):
        super().__init__(in_channels, num_classes + 1)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


class BatchOnlyTransform(GeneralizedRCNNTransform):
    """Images arrive normalised (``readout.transforms.to_tensor``) at the resolution the
    protocol wants ("we keep the image resolution as it is", FlowE Sec. 4.2): only pad them
    into a batch (zeros = the mean colour, to a multiple of 32)."""

    def __init__(self):
        super().__init__(min_size=1, max_size=1, image_mean=[0.0] * 3, image_std=[1.0] * 3,
                         size_divisible=32)

    def normalize(self, image):
        return image

    def resize(self, image, target=None):
        return image, target


class DetectionReadout(FasterRCNN):
    """torchvision's Faster R-CNN plus what the one readout loop needs: which modules train
    (``trainable_prefixes``), how a training sample is drawn, and the loss."""

    def __init__(self, *, backbone: DetectionBackbone, anchor_sizes: tuple[int, ...],
                 box_roi_pool: AlignedRoIPooler, box_head: nn.Module,
                 box_predictor: FloatBoxPredictor, rpn_pre_nms_top_n_train: int,
                 rpn_post_nms_top_n_train: int, rpn_pre_nms_top_n_test: int,
                 rpn_post_nms_top_n_test: int, trainable_prefixes: tuple[str, ...]):
        levels = len(backbone.output_shape())
        if levels == 1:  # C4: every anchor size on the one level
            sizes = (tuple(anchor_sizes),)
        elif len(anchor_sizes) == levels:  # FPN: one size per level
            sizes = tuple((s,) for s in anchor_sizes)
        else:
            raise ValueError(f"{len(anchor_sizes)} anchor sizes for {levels} levels")
        anchors = AnchorGenerator(sizes=sizes, aspect_ratios=(ASPECT_RATIOS,) * len(sizes))
        super().__init__(
            backbone, num_classes=None, rpn_anchor_generator=anchors,
            rpn_head=FloatRPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0]),
            rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
            rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
            box_roi_pool=box_roi_pool, box_head=box_head, box_predictor=box_predictor)
        self.transform = BatchOnlyTransform()
        self.trainable_prefixes = tuple(trainable_prefixes)
        for name, p in self.named_parameters():
            if not name.startswith(self.trainable_prefixes):
                p.requires_grad_(False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()
                if k.startswith(self.trainable_prefixes)}

    @staticmethod
    def training_indices(dataset) -> list[int]:
        """Images with at least one non-crowd box (detectron2's FILTER_EMPTY_ANNOTATIONS)."""
        return [i for i in range(len(dataset))
                if any(not a["iscrowd"] for a in dataset.annotations(i))]

    @staticmethod
    def train_sample(item: dict, rng, schedule):
        """Crowd regions dropped from the targets (as detectron2's mapper does), original
        resolution, horizontal flip with probability 0.5 when the protocol flips."""
        keep = item["iscrowd"] == 0
        image, boxes = item["image"], item["boxes"][keep].copy()
        if schedule.flip and rng.uniform() < 0.5:
            width = image.shape[1]
            image = image[:, ::-1]
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        return to_tensor(image), {"boxes": torch.from_numpy(boxes),
                                  "labels": torch.from_numpy(item["labels"][keep])}

    @staticmethod
    def collate(samples):
        return tuple(zip(*samples))  # (images, targets): images differ in size

    @staticmethod
    def training_losses(net, batch, device, schedule=None) -> dict[str, torch.Tensor]:
        """RPN objectness + box regression and Fast R-CNN classification + box regression
        (torchvision's losses; `net` is the model or its DDP wrapper)."""
        images, targets = batch
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with autocast(device):
            losses = net(images, targets)
        return {k: v.float() for k, v in losses.items()}


def _trunk(checkpoint: dict, log) -> ResNetBackbone:
    return build_backbone(checkpoint, dilation=(False, False, False), frozen=True, log=log)


@register_detector("faster_rcnn_c4")
def faster_rcnn_c4(*, checkpoint: dict, num_classes: int, log=print) -> DetectionReadout:
    """detectron2 Base-RCNN-C4: RPN pre/post-NMS top-k 12000/2000 (train), 6000/1000 (test)."""
    trunk = _trunk(checkpoint, log)
    res5_channels = trunk.output_shape()["res5"].channels
    res5 = trunk.split_off("res5")
    backbone = DetectionBackbone(trunk=trunk, features=("res4",))
    return DetectionReadout(
        backbone=backbone, anchor_sizes=(32, 64, 128, 256, 512),
        box_roi_pool=AlignedRoIPooler(featmap_names=["res4"],
                                      strides=[backbone.output_shape()["res4"].stride],
                                      output_size=14),
        box_head=Res5BoxHead(res5=res5),
        box_predictor=FloatBoxPredictor(in_channels=res5_channels, num_classes=num_classes),
        rpn_pre_nms_top_n_train=12000, rpn_post_nms_top_n_train=2000,
        rpn_pre_nms_top_n_test=6000, rpn_post_nms_top_n_test=1000,
        trainable_prefixes=("rpn.", "roi_heads.box_predictor."))


@register_detector("faster_rcnn_fpn")
def faster_rcnn_fpn(*, checkpoint: dict, num_classes: int, log=print) -> DetectionReadout:
    """detectron2 Base-RCNN-FPN: P2-P6 with 256 channels, RPN top-k 2000/1000 (train, per
    level / per image), 1000/1000 (test); box head 2 x FC 1024 on 7x7 RoIAlign of P2-P5."""
    backbone = DetectionBackbone(trunk=_trunk(checkpoint, log),
                                 features=("res2", "res3", "res4", "res5"), fpn_channels=256)
    pooled = [n for n in backbone.output_shape() if n != "p6"]
    pool = AlignedRoIPooler(featmap_names=pooled,
                            strides=[backbone.output_shape()[n].stride for n in pooled],
                            output_size=7)
    return DetectionReadout(
        backbone=backbone, anchor_sizes=(32, 64, 128, 256, 512), box_roi_pool=pool,
        box_head=TwoMLPHead(backbone.out_channels * 7 * 7, 1024),
        box_predictor=FloatBoxPredictor(in_channels=1024, num_classes=num_classes),
        rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=1000,
        rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000,
        trainable_prefixes=("backbone.fpn.", "rpn.", "roi_heads.box_head.",
                            "roi_heads.box_predictor."))


def build_detection_model(checkpoint: dict, head: str, num_classes: int, *,
                          log=print) -> DetectionReadout:
    if checkpoint.get("decoder"):
        log("the checkpoint's spatial decoder is not used by detection readouts")
    return get_detector_class(head)(checkpoint=checkpoint, num_classes=num_classes,
                                    log=log).train(False)
