"""Random resize / crop / flip of (image, label) pairs, and normalisation.

Two resize rules, as the protocols state them:
- ``short_side: [a, b]``: shorter side resized to a uniform integer in [a, b]
  (FlowE Sec. 4.2: "randomly resized with shorter side from 512 to 2048");
- ``scale: [W, H], ratio: [r0, r1]``: mmsegmentation's RandomResize with keep_ratio: the
  image is fitted into (W r, H r) for r ~ U[r0, r1].
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from core.inputs import mean_pixel, normalize_uint8

IGNORE_INDEX = 255


def resize_pair(image, label, height: int, width: int):
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if label is not None:
        label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, label


def random_resize(image, label, rng: np.random.Generator, resize: dict | None):
    if not resize:
        return image, label
    h, w = image.shape[:2]
    if "short_side" in resize:
        lo, hi = resize["short_side"]
        s = int(rng.integers(lo, hi + 1)) / min(h, w)
    else:
        (sw, sh), (r0, r1) = resize["scale"], resize.get("ratio", (1.0, 1.0))
        r = rng.uniform(r0, r1)
        s = min(sw * r / max(h, w), sh * r / min(h, w))
    return resize_pair(image, label, max(1, round(h * s)), max(1, round(w * s)))


def random_crop(image, label, rng: np.random.Generator, crop: tuple[int, int]):
    ch, cw = crop
    h, w = image.shape[:2]
    if h < ch or w < cw:  # pad: zeros after normalisation for the image, ignore for labels
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        image[h:, :] = mean_pixel()
        image[:, w:] = mean_pixel()
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        h, w = image.shape[:2]
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return image[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]


def train_transform(image, label, rng: np.random.Generator, *, resize: dict | None,
                    crop: tuple[int, int], flip: bool):
    image, label = random_resize(image, label, rng, resize)
    image, label = random_crop(image, label, rng, crop)
    if flip and rng.uniform() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return to_tensor(image), torch.from_numpy(np.ascontiguousarray(label)).long()


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 RGB -> float32 3xHxW in the suite's input convention (core.inputs, as
    pretraining feeds its trunks)."""
    return torch.from_numpy(np.ascontiguousarray(normalize_uint8(image).transpose(2, 0, 1)))
