"""Trackable augmentations: every geometric view keeps the 3x3 map A from its pixels to the
frame's pixels (view(q) = frame(A q)), so a frame flow can be carried to views
(``pretrain.flow.view_flow``, FlowE Eq. 4). Photometric changes follow BYOL (Grill et al.
2020, Table 6): colour jitter (0.4, 0.4, 0.2, 0.1) with p = 0.8, grayscale p = 0.2, Gaussian
blur p = 1.0 / 0.1 and solarize p = 0 / 0.2 for the two views.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from .flow.geometry import apply_affine, pixel_grid, sample_at


@dataclass(frozen=True)
class ViewSpec:
    size: tuple[int, int]  # output (h, w)
    area: tuple[float, float] = (0.08, 1.0)  # crop area as a fraction of the frame
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    scale: tuple[float, float] = (1.0, 1.0)  # random affine zoom (FlowE 0.5-2, PooDLe 0.9-1.1)
    rotation: float = 0.0  # max degrees (FlowE 30, PooDLe 10)
    flip: bool = True


def view_matrix(frame_hw: tuple[int, int], spec: ViewSpec, rng: np.random.Generator,
                *, box: tuple[float, float, float, float] | None = None) -> torch.Tensor:
    """A [3, 3]: view pixel -> frame pixel. A crop (x0, y0, w, h) (random area / ratio unless
    `box` is given) resized to spec.size, a zoom and rotation about the crop centre, a flip."""
    H, W = frame_hw
    h, w = spec.size
    if box is None:
        for _ in range(10):
            area = rng.uniform(*spec.area) * H * W
            ratio = math.exp(rng.uniform(math.log(spec.ratio[0]), math.log(spec.ratio[1])))
            cw, ch = math.sqrt(area * ratio), math.sqrt(area / ratio)
            if cw <= W and ch <= H:
                break
        else:
            cw, ch = float(W), float(H)
        box = (rng.uniform(0, W - cw), rng.uniform(0, H - ch), cw, ch)
    x0, y0, cw, ch = box
    # view pixel centres 0..w-1 spread over the crop [x0, x0 + cw] (pixel-centre convention)
    crop = torch.tensor([[cw / w, 0, x0 + cw / (2 * w) - 0.5],
                         [0, ch / h, y0 + ch / (2 * h) - 0.5], [0, 0, 1]], dtype=torch.float64)
    zoom = rng.uniform(*spec.scale)
    angle = math.radians(rng.uniform(-spec.rotation, spec.rotation))
    cx, cy = (w - 1) / 2, (h - 1) / 2
    c, s = math.cos(angle) / zoom, math.sin(angle) / zoom
    affine = torch.tensor([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy],
                           [0, 0, 1]], dtype=torch.float64)
    flip = torch.eye(3, dtype=torch.float64)
    if spec.flip and rng.uniform() < 0.5:
        flip[0, 0], flip[0, 2] = -1, w - 1
    return (crop @ affine @ flip).float()


def render_view(frame: torch.Tensor, matrix: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """frame [3, H, W] float -> view [3, h, w] (bilinear, zeros outside the frame)."""
    grid = pixel_grid(*size, dtype=frame.dtype)[None]
    return sample_at(frame[None], apply_affine(matrix[None].to(frame.dtype), grid))[0]


def photometric(view: torch.Tensor, rng: np.random.Generator, *, blur_p: float,
                solarize_p: float, saturation: float = 0.2) -> torch.Tensor:
    """BYOL's colour pipeline on a [3, h, w] image in [0, 1] (MoCo v2's with saturation 0.4,
    blur p = 0.5 and no solarize)."""
    if rng.uniform() < 0.8:
        ops = [(TF.adjust_brightness, rng.uniform(0.6, 1.4)),
               (TF.adjust_contrast, rng.uniform(0.6, 1.4)),
               (TF.adjust_saturation, rng.uniform(1 - saturation, 1 + saturation)),
               (TF.adjust_hue, rng.uniform(-0.1, 0.1))]
        for k in rng.permutation(4):
            fn, value = ops[k]
            view = fn(view, value)
    if rng.uniform() < 0.2:
        view = TF.rgb_to_grayscale(view, num_output_channels=3)
    if rng.uniform() < blur_p:
        sigma = float(rng.uniform(0.1, 2.0))
        k = max(3, int(2 * round(3 * sigma) + 1))
        view = TF.gaussian_blur(view, [k, k], [sigma, sigma])
    if rng.uniform() < solarize_p:
        view = TF.solarize(view, 0.5)
    return view.clamp(0, 1)


def crop_views(sources: dict[str, torch.Tensor], rngs: list[np.random.Generator],
               spec: ViewSpec, colours: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Image-level views: for each sample n and each source ``k`` (frames [N, 3, H, W]) a
    random crop / flip by `spec` with the colour changes ``colours[k]`` ->
    {"view<k>": [N, 3, h, w]}; sample n's randomness is rngs[n]'s."""
    views: dict[str, list] = {"view" + key: [] for key in sources}
    for n, rng in enumerate(rngs):
        for key, src in sources.items():
            A = view_matrix(src.shape[-2:], spec, rng)
            v = render_view(src[n], A, spec.size)
            views["view" + key].append(photometric(v, rng, **colours[key]))
    return {k: torch.stack(v) for k, v in views.items()}
