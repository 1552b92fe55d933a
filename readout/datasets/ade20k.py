"""ADE20K SceneParsing (ADEChallengeData2016): 150 classes, reduce-zero-label."""
from __future__ import annotations

import numpy as np

from .base import SegmentationDataset, register_dataset
from .classes import ADE20K_CLASSES, ade20k_reduce_zero_label_lut

_LUT = ade20k_reduce_zero_label_lut()
_FOLDERS = {"train": "training", "val": "validation"}


@register_dataset("ade20k")
class ADE20K(SegmentationDataset):
    classes = ADE20K_CLASSES
    dirname = "ade20k"
    splits = ("train", "val")
    markers = ("ADEChallengeData2016", "images", "annotations")
    tree = """ade20k/
  ADEChallengeData2016/
    images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
    annotations/{training,validation}/ADE_{train,val}_<8 digits>.png   (0 = other, k = class k)"""

    @classmethod
    def resolve_root(cls, root):
        base = super().resolve_root(root)
        if (base / "ADEChallengeData2016").is_dir():
            return base / "ADEChallengeData2016"
        return base


    def _split_dirs(self, split):
        return [self.root / "images" / _FOLDERS[split],
                self.root / "annotations" / _FOLDERS[split]]

    def _pairs(self, split):
        folder = _FOLDERS[split]
        images = sorted((self.root / "images" / folder).glob("*.jpg"))
        ann = self.root / "annotations" / folder
        return self._match(images, lambda img: ann / f"{img.stem}.png")

    def _to_train_ids(self, label: np.ndarray) -> np.ndarray:
        return _LUT[label.astype(np.uint8, copy=False)]
