"""Semantic-segmentation metrics from a confusion matrix, as cityscapesScripts computes them.

IoU_c = TP / (TP + FP + FN), with pixels whose ground truth is ignored left out entirely
(so they are neither FP nor FN); a class absent from both prediction and ground truth has
IoU NaN and is excluded from every mean. Percentages throughout.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

IGNORE_INDEX = 255


class SegmentationMetric:
    """Accumulates a confusion matrix over ``update(pred, target)`` calls.

    ``class_groups`` maps a group name (e.g. ``small``) to class indices; ``compute()`` then
    also returns ``mIoU_<group>``.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 class_groups: Mapping[str, Sequence[int]] | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_groups = {k: list(v) for k, v in (class_groups or {}).items()}
        for name, idx in self.class_groups.items():
            bad = [i for i in idx if not 0 <= i < num_classes]
            if bad:
                raise ValueError(f"class group {name!r} has indices {bad} outside "
                                 f"[0, {num_classes})")
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.confusion.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: integer tensors of the same shape (any batch shape)."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        if pred.is_floating_point() or target.is_floating_point():
            raise TypeError("pred and target must be integer class maps")
        k = self.num_classes
        pred = pred.reshape(-1)
        target = target.reshape(-1)
        if pred.numel() and (int(pred.max()) >= k or int(pred.min()) < 0):
            raise ValueError(f"pred has values outside [0, {k})")
        # One pass: a (target value x pred) histogram over every target value that occurs;
        # rows >= k other than the ignore index are invalid targets.
        rows = max(int(target.max()) + 1 if target.numel() else 0, k)
        if int(target.min() if target.numel() else 0) < 0:
            raise ValueError("target has negative values")
        # the narrowest integer type that holds the bin index halves the cost of the pass
        dtype = (torch.int16 if rows * k <= 2 ** 15 else
                 torch.int32 if rows * k <= 2 ** 31 else torch.int64)
        hist = torch.bincount(target.to(dtype) * k + pred.to(dtype),
                              minlength=rows * k).reshape(rows, k)
        bad = [v for v in range(k, rows) if v != self.ignore_index and hist[v].any()]
        if bad:
            raise ValueError(f"target has values {bad[:5]} outside [0, {k}) that are not the "
                             f"ignore index {self.ignore_index}")
        self.confusion += hist[:k].cpu()

    def compute(self) -> dict:
        cm = self.confusion.to(torch.float64)
        tp = cm.diag()
        gt = cm.sum(1)
        predicted = cm.sum(0)
        union = gt + predicted - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        acc_c = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
        total = cm.sum()
        out = {"mIoU": _nanmean(iou) * 100,
               "Acc": float(tp.sum() / total * 100) if total > 0 else float("nan"),
               "mAcc": _nanmean(acc_c) * 100,
               "IoU": [float(v) * 100 for v in iou],
               "confusion": self.confusion.tolist()}  # [ground truth, prediction] pixels
        for name, idx in self.class_groups.items():
            out[f"mIoU_{name}"] = _nanmean(iou[idx]) * 100 if idx else float("nan")
        return out


def _nanmean(values: torch.Tensor) -> float:
    ok = ~torch.isnan(values)
    return float(values[ok].mean()) if ok.any() else float("nan")
