"""Cityscapes fine annotations: leftImg8bit + gtFine labelIds -> 19 train ids."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import SegmentationDataset, register_dataset
from .classes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, cityscapes_label_to_train_lut

_LUT = cityscapes_label_to_train_lut()


@register_dataset("cityscapes")
class Cityscapes(SegmentationDataset):
    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE
    dirname = "cityscapes"
    splits = ("train", "val", "test")
    markers = ("leftImg8bit", "gtFine")
    tree = """cityscapes/
  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png"""


    def _split_dirs(self, split):
        return [self.root / "leftImg8bit" / split, self.root / "gtFine" / split]

    def _pairs(self, split):
        images = sorted((self.root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        gt = self.root / "gtFine" / split

        def label_of(img: Path) -> Path:
            stem = img.name[: -len("_leftImg8bit.png")]
            return gt / img.parent.name / f"{stem}_gtFine_labelIds.png"
        return self._match(images, label_of)

    def _to_train_ids(self, label: np.ndarray) -> np.ndarray:
        if label.dtype != np.uint8:
            raise ValueError("Cityscapes labelIds must be 8-bit PNGs")
        return _LUT[label]
