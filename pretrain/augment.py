"""Trackable augmentations: every geometric view keeps the 3x3 map A from its pixels to the
frame's pixels (view(q) = frame(A q)), so a frame flow can be carried to views
(``pretrain.flow.view_flow``, FlowE Eq. 4). Colour changes are a ``ColourSpec`` per view;
``COLOURS`` names the recipes (BYOL's asymmetric one, SimCLR's symmetric one, MoCo v2's).
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


def random_box(frame_hw: tuple[int, int], spec: ViewSpec,
               rng: np.random.Generator) -> tuple[float, float, float, float]:
    """A RandomResizedCrop box (x0, y0, w, h) in frame pixels: area and aspect ratio drawn
    from spec.area / spec.ratio (10 tries, then the whole frame)."""
    H, W = frame_hw
    for _ in range(10):
        area = rng.uniform(*spec.area) * H * W
        ratio = math.exp(rng.uniform(math.log(spec.ratio[0]), math.log(spec.ratio[1])))
        cw, ch = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if cw <= W and ch <= H:
            break
    else:
        cw, ch = float(W), float(H)
    return rng.uniform(0, W - cw), rng.uniform(0, H - ch), cw, ch


def crop_matrix(box: tuple[float, float, float, float], size: tuple[int, int]) -> torch.Tensor:
    """[3, 3] float64: pixel of a [h, w] image resized from `box` (x0, y0, w, h) -> frame
    pixel; pixel centres 0..w-1 spread over [x0, x0 + w] (align_corners=False resizing)."""
    x0, y0, cw, ch = box
    h, w = size
    return torch.tensor([[cw / w, 0, x0 + cw / (2 * w) - 0.5],
                         [0, ch / h, y0 + ch / (2 * h) - 0.5], [0, 0, 1]], dtype=torch.float64)


def affine_flip_matrix(spec: ViewSpec, rng: np.random.Generator) -> torch.Tensor:
    """[3, 3] float64 on a [h, w] image: a zoom by spec.scale and a rotation by up to
    spec.rotation degrees about its centre, then a horizontal flip with p = 0.5 if spec.flip
    (view pixel -> image pixel)."""
    h, w = spec.size
    zoom = rng.uniform(*spec.scale)
    angle = math.radians(rng.uniform(-spec.rotation, spec.rotation))
    cx, cy = (w - 1) / 2, (h - 1) / 2
    c, s = math.cos(angle) / zoom, math.sin(angle) / zoom
    affine = torch.tensor([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy],
                           [0, 0, 1]], dtype=torch.float64)
    flip = torch.eye(3, dtype=torch.float64)
    if spec.flip and rng.uniform() < 0.5:
        flip[0, 0], flip[0, 2] = -1, w - 1
    return affine @ flip


def view_matrix(frame_hw: tuple[int, int], spec: ViewSpec, rng: np.random.Generator,
                *, box: tuple[float, float, float, float] | None = None) -> torch.Tensor:
    """A [3, 3]: view pixel -> frame pixel. A crop (x0, y0, w, h) (random area / ratio unless
    `box` is given) resized to spec.size, a zoom and rotation about the crop centre, a flip."""
    if box is None:
        box = random_box(frame_hw, spec, rng)
    return (crop_matrix(box, spec.size) @ affine_flip_matrix(spec, rng)).float()


def render_view(frame: torch.Tensor, matrix: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """frame [3, H, W] float -> view [3, h, w] (bilinear, zeros outside the frame)."""
    grid = pixel_grid(*size, dtype=frame.dtype)[None]
    return sample_at(frame[None], apply_affine(matrix[None].to(frame.dtype), grid))[0]


@dataclass(frozen=True)
class ColourSpec:
    """One view's colour changes, in this order: jitter (brightness, contrast, saturation,
    hue; factors drawn in [1 - x, 1 + x], hue in [-x, x], applied in random order) with
    probability jitter_p, grayscale with gray_p, Gaussian blur (sigma 0.1-2) with blur_p,
    solarize at 0.5 with solarize_p. blur_kernel: the kernel side as a fraction of the image
    side, rounded up to odd as SimCLR's code does (0: 2 round(3 sigma) + 1)."""
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 1.0
    blur_kernel: float = 0.0
    solarize_p: float = 0.0


SIMCLR = ColourSpec(jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5, blur_kernel=0.1)
COLOURS: dict[str, dict[str, ColourSpec]] = {
    # BYOL Table 6: blur p = 1.0 / 0.1 and solarize p = 0 / 0.2 for the first / second view
    "byol": {"1": ColourSpec(blur_p=1.0), "2": ColourSpec(blur_p=0.1, solarize_p=0.2)},
    # SimCLR strength 1 on both views (Chen et al. 2020 App. A; the PooDLe authors' code for
    # its FlowE and PooDLe runs: agentic-learning-ai-lab/poodle src/datasets/bdd100k.py
    # color_distortion_strength 1.0, blur kernel round_up_odd(0.1 side), no solarize)
    "simclr": {"1": SIMCLR, "2": SIMCLR},
    # facebookresearch/moco main_moco.py --aug-plus: jitter 0.4/0.4/0.4/0.1, blur p 0.5
    "moco_v2": {k: ColourSpec(jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5) for k in "12"},
}


def _odd_at_least(x: float) -> int:
    """SimCLR / PooDLe ``round_up_odd``: int(ceil(x / 2) * 2 + 1)."""
    return int(math.ceil(x / 2) * 2 + 1)


def photometric(view: torch.Tensor, rng: np.random.Generator, spec: ColourSpec) -> torch.Tensor:
    """`spec`'s colour changes on a [3, h, w] image in [0, 1]."""
    b, c, s, hue = spec.jitter
    if rng.uniform() < spec.jitter_p:
        ops = [(TF.adjust_brightness, rng.uniform(1 - b, 1 + b)),
               (TF.adjust_contrast, rng.uniform(1 - c, 1 + c)),
               (TF.adjust_saturation, rng.uniform(1 - s, 1 + s)),
               (TF.adjust_hue, rng.uniform(-hue, hue))]
        for k in rng.permutation(4):
            fn, value = ops[k]
            view = fn(view, value)
    if rng.uniform() < spec.gray_p:
        view = TF.rgb_to_grayscale(view, num_output_channels=3)
    if rng.uniform() < spec.blur_p:
        sigma = float(rng.uniform(0.1, 2.0))
        if spec.blur_kernel:
            kernel = [_odd_at_least(spec.blur_kernel * n) for n in view.shape[-1:-3:-1]]
        else:
            kernel = [max(3, int(2 * round(3 * sigma) + 1))] * 2
        view = TF.gaussian_blur(view, kernel, [sigma, sigma])
    if rng.uniform() < spec.solarize_p:
        view = TF.solarize(view, 0.5)
    return view.clamp(0, 1)


def crop_views(sources: dict[str, torch.Tensor], rngs: list[np.random.Generator],
               spec: ViewSpec, colours: dict[str, ColourSpec], *,
               matrices: bool = False) -> dict[str, torch.Tensor]:
    """Image-level views: for each sample n and each source ``k`` (frames [N, 3, H, W]) a
    random crop / flip by `spec` with the colour changes ``colours[k]`` ->
    {"view<k>": [N, 3, h, w]} (and with `matrices` "A<k>": [N, 3, 3], view pixel -> frame
    pixel); sample n's randomness is rngs[n]'s."""
    views: dict[str, list] = {p + key: [] for key in sources
                              for p in ("view", "A")[:1 + matrices]}
    for n, rng in enumerate(rngs):
        for key, src in sources.items():
            A = view_matrix(src.shape[-2:], spec, rng)
            v = render_view(src[n], A, spec.size)
            views["view" + key].append(photometric(v, rng, colours[key]))
            if matrices:
                views["A" + key].append(A)
    return {k: torch.stack(v) for k, v in views.items()}


@dataclass(frozen=True)
class CropViews:
    """The view maker of image-level methods (BYOL, MoCo): view 1 from frame 1, view 2 from
    frame 2 (`two_frames`) or from frame 1 again. Plain data, so DataLoader workers run it."""
    spec: ViewSpec
    colours: dict[str, ColourSpec]
    two_frames: bool = False

    def __call__(self, frames, rngs: list[np.random.Generator]) -> dict:
        """frames [N, 2, 3, H, W] (pairs)."""
        sources = {"1": frames[:, 0], "2": frames[:, 1] if self.two_frames else frames[:, 0]}
        return crop_views(sources, rngs, self.spec, self.colours)
