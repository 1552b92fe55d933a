"""The UperNet suites train as mmsegmentation 1.2.2 does outside the forward pass: its
initialisation, its loss average and its poly schedule's floor, each against a value
computed the mmseg way."""
import math

import pytest
import torch
import torch.nn.functional as F

from core.trunk import ShapeSpec
from readout.heads import UperNetHead
from readout.model import pixel_loss
from readout.train import ReadoutSchedule, learning_rate

SHAPES = {"res2": ShapeSpec(64, 4), "res3": ShapeSpec(128, 8), "res4": ShapeSpec(256, 16),
          "res5": ShapeSpec(512, 32)}


def _kaiming_fan_out_std(conv: torch.nn.Conv2d) -> float:
    """mmcv kaiming_init(mode='fan_out', nonlinearity='relu', distribution='normal'):
    std = gain / sqrt(fan_out), gain sqrt(2), fan_out = out_channels x kernel area."""
    return math.sqrt(2.0) / math.sqrt(conv.out_channels * conv.kernel_size[0]
                                      * conv.kernel_size[1])


def test_upernet_is_initialised_as_mmseg_and_pytorch_init_stays_selectable():
    torch.manual_seed(0)
    head = UperNetHead(input_shape=SHAPES, num_classes=19)
    convs = {"ppm bottleneck": head.bottleneck[0], "fused bottleneck": head.fuse[0],
             "fpn": head.fpn[0][0], "lateral": head.lateral[0][0], "aux": head.aux[0][0],
             "ppm stage": head.ppm.stages[0][1][0]}
    for name, conv in convs.items():
        expected = _kaiming_fan_out_std(conv)
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.1), name
    for classifier in (head.classifier[-1], head.aux[-1]):  # conv_seg: N(0, 0.01), bias 0
        assert classifier.weight.std().item() == pytest.approx(0.01, rel=0.1)
        assert torch.count_nonzero(classifier.bias) == 0
    bns = [m for m in head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    torch.manual_seed(0)
    plain = UperNetHead(input_shape=SHAPES, num_classes=19, init="pytorch")
    assert plain.bottleneck[0].weight.std() < 0.5 * _kaiming_fan_out_std(plain.bottleneck[0])
    with pytest.raises(ValueError, match="mmseg, pytorch"):
        UperNetHead(input_shape=SHAPES, num_classes=19, init="xavier")


def test_all_pixel_average_is_mmsegs_cross_entropy():
    """mmseg CrossEntropyLoss(avg_non_ignore=False): F.cross_entropy(reduction='none',
    ignore_index=255), then weight_reduce_loss with no avg_factor: loss.mean() over every
    pixel, ignored ones 0; the labelled-pixel mean times the labelled fraction."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 6, 7, generator=g)
    labels = torch.randint(0, 5, (2, 6, 7), generator=g)
    labels[0, :3] = 255
    per_pixel = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    mmseg = per_pixel.sum() / labels.numel()
    assert pixel_loss(logits, labels, average="all_pixels").item() == pytest.approx(
        mmseg.item(), rel=1e-6)
    labelled = (labels != 255).float().mean()
    assert pixel_loss(logits, labels, average="all_pixels").item() == pytest.approx(
        (labelled * pixel_loss(logits, labels)).item(), rel=1e-6)


def test_poly_schedule_decays_to_mmsegs_floor():
    """The poly decay with mmseg's floor, step by step: v_t = (v_t-1 - eta_min)
    (1 - 1 / (T - t + 1))^power + eta_min from v_0 = lr, T the iterations: mmseg 0.x's poly
    exactly (mmcv PolyLrUpdaterHook, 1 - t / max_iters); mmengine's PolyLR (mmseg 1.x)
    counts T - 1 (total_iters = end - begin - 1), a relative difference below 1 / T."""
    s = ReadoutSchedule(iterations=50, batch_size=2, lr=0.01, momentum=0.9,
                        weight_decay=5e-4, flip=True, checkpoint_every=10, poly_power=0.9,
                        poly_min_lr=1e-4)
    value = s.lr
    for t in range(s.iterations):
        if t:
            value = (value - 1e-4) * (1 - 1 / (s.iterations - t + 1)) ** 0.9 + 1e-4
        assert learning_rate(s, t) == pytest.approx(value, rel=1e-9), t
    assert learning_rate(s, s.iterations) == pytest.approx(1e-4)
    no_floor = ReadoutSchedule(**{**s.__dict__, "poly_min_lr": 0.0})
    assert learning_rate(no_floor, s.iterations) == 0.0
