"""The input convention of every backbone in this suite, in one definition: what a trunk's
first convolution is fed. Pretraining applies it after the photometric augmentations (the
encoder normalises its input, ``pretrain.models.Encoder``), every readout applies it to the
images it loads (``readout.transforms.to_tensor``), and every checkpoint declares it
(``meta.input``, core.checkpoint) so that a file trained on other inputs is converted when
it is read (``convert_state``) instead of being read out off-distribution.

``IMAGENET``: RGB, pixel values scaled to [0, 1], then (x - mean) / std with ImageNet's
statistics, as torchvision's weights and the authors' pretraining code (facebookresearch/moco
main_moco.py ``normalize``; zdaxie/PixPro and rioyokotalab/PixPro-with-OpticalFlow
contrast/data/transform.py; WXinlong/DenseCL configs ``img_norm_cfg``; deepmind-research
byol/utils/dataset.py ``normalize_images``; agentic-learning-ai-lab/poodle's data pipeline).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class InputConvention:
    """Pixels (in `channels` order) scaled to [0, `range`], then (x - mean) / std per
    channel. ``range`` 255 with mean 123.675 is ImageNet's convention in detectron2 units."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    range: float = 1.0
    channels: str = "RGB"

    def meta(self) -> dict:
        return {"mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std],
                "range": float(self.range), "channels": self.channels}

    @classmethod
    def from_meta(cls, value, where: str) -> "InputConvention":
        """The convention a checkpoint's ``meta.input`` declares; ValueError naming
        `where` for anything else."""
        if not isinstance(value, dict) or not {"mean", "std"} <= set(value):
            raise ValueError(f"{where}: meta.input {value!r} is not {{mean: [3 numbers], "
                             f"std: [3 numbers], range: number, channels: RGB|BGR}}")
        unknown = sorted(set(value) - {"mean", "std", "range", "channels"})
        if unknown:
            raise ValueError(f"{where}: meta.input has unknown keys {unknown}")
        try:
            mean = tuple(float(m) for m in value["mean"])
            std = tuple(float(s) for s in value["std"])
            rng = float(value.get("range", 1.0))
        except (TypeError, ValueError):
            raise ValueError(f"{where}: meta.input mean / std / range are not numbers: "
                             f"{value!r}") from None
        channels = value.get("channels", "RGB")
        if (len(mean) != 3 or len(std) != 3 or not all(s > 0 for s in std) or rng <= 0
                or channels not in CHANNEL_ORDERS
                or not all(math.isfinite(x) for x in (*mean, *std, rng))):
            raise ValueError(f"{where}: meta.input {value!r}: mean and std need 3 finite "
                             f"numbers (std > 0), range > 0, channels one of "
                             f"{', '.join(CHANNEL_ORDERS)}")
        return cls(mean, std, rng, channels)

    def rgb_affine(self) -> tuple[list[float], list[float], list[int]]:
        """(a, b, order): input channel j = a[j] * p[order[j]] + b[j] for RGB pixels p in
        [0, 1]."""
        order = [0, 1, 2] if self.channels == "RGB" else [2, 1, 0]
        a = [self.range / s for s in self.std]
        b = [-m / s for m, s in zip(self.mean, self.std)]
        return a, b, order

    def same_as(self, other: "InputConvention", tol: float = 1e-4) -> bool:
        (a1, b1, o1), (a2, b2, o2) = self.rgb_affine(), other.rgb_affine()
        return o1 == o2 and all(abs(x - y) <= tol * max(1.0, abs(y))
                                for x, y in zip(a1 + b1, a2 + b2))

    def describe(self) -> str:
        def nums(v):
            return "/".join(f"{x:g}" for x in v)
        return f"{self.channels} in [0, {self.range:g}], mean {nums(self.mean)}, std {nums(self.std)}"


IMAGENET = InputConvention(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
# what `bench pretrain` fed its trunks before checkpoints declared an input convention
# (frames / 255, not normalised): such exports are converted when read
UNNORMALISED = InputConvention(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def normalize(x: torch.Tensor, convention: InputConvention = IMAGENET) -> torch.Tensor:
    """RGB images in [0, 1], float [..., 3, H, W] -> the trunk's input (same shape)."""
    import torch  # this module stays torch-free to import (core.checkpoint, the CLI)
    a, b, order = convention.rgb_affine()
    shape = (3, 1, 1)
    a = torch.tensor(a, dtype=x.dtype, device=x.device).view(shape)
    b = torch.tensor(b, dtype=x.dtype, device=x.device).view(shape)
    if order != [0, 1, 2]:
        x = x[..., order, :, :]
    return x * a + b


def normalize_uint8(image: np.ndarray, convention: InputConvention = IMAGENET) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 [H, W, 3], the same values as ``normalize`` of
    image / 255."""
    a, b, order = convention.rgb_affine()
    a = np.asarray(a, np.float32) / 255
    return image[..., order].astype(np.float32) * a + np.asarray(b, np.float32)


def mean_pixel(convention: InputConvention = IMAGENET) -> np.ndarray:
    """The uint8 RGB pixel that normalises to about 0 (padding of readout crops)."""
    a, b, order = convention.rgb_affine()
    rgb = np.zeros(3, np.float32)
    rgb[order] = [-bj / aj for aj, bj in zip(a, b)]
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def convert_state(state: dict[str, torch.Tensor], source: InputConvention,
                  target: InputConvention = IMAGENET) -> dict[str, torch.Tensor]:
    """A trunk trained on `source` inputs made to take `target` inputs, folded into its
    first convolution and BatchNorm (torchvision names ``conv1.weight``, ``bn1.*``).

    Input channel j of `source` is an affine function of `target`'s channels:
    s_j = a_j t_c + b_j, so conv1(s) = W' * t + k with W'[:, c] = a_j W[:, j] and the
    constant k_o = sum_j b_j sum W[o, j], which bn1's running mean absorbs (eval mode; batch
    statistics absorb it in train mode). Exact except within conv1's zero padding (its
    3-pixel border: a zero of one convention is a colour of the other).
    """
    import torch
    a_s, b_s, o_s = source.rgb_affine()
    a_t, b_t, o_t = target.rgb_affine()
    target_channel = {rgb: i for i, rgb in enumerate(o_t)}
    W = state["conv1.weight"].double()
    new_w = torch.zeros_like(W)
    shift = torch.zeros(W.shape[0], dtype=torch.float64)
    for j, rgb in enumerate(o_s):
        c = target_channel[rgb]
        # p = (t_c - b_t[c]) / a_t[c];  s_j = a_s[j] p + b_s[j]
        scale = a_s[j] / a_t[c]
        offset = b_s[j] - scale * b_t[c]
        new_w[:, c] += scale * W[:, j]
        shift += offset * W[:, j].sum(dim=(1, 2))
    out = dict(state)
    out["conv1.weight"] = new_w.to(state["conv1.weight"].dtype)
    mean = state["bn1.running_mean"]
    out["bn1.running_mean"] = (mean.double() - shift).to(mean.dtype)
    return out
