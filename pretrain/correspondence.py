"""Paired views of a frame pair and the dense correspondence between them, shared by the
flow-equivariance methods (FlowE Sec. 3.2 / Eq. 4, PooDLe Sec. 3 / Eq. 1), in the order of
the PooDLe authors' code (agentic-learning-ai-lab/poodle src/datasets/bdd100k.py, then
src/models/poodle.py): one crop box at the same place in both frames resized to the view
size (the "pre-affine image"), each frame's colour changes on it, then an independent
affine (and flip) of each coloured image; and the view-to-view flow with its validity (in
view, forward-backward consistent in pre-affine image pixels, where the authors run RAFT)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .augment import ColourSpec, ViewSpec, affine_flip_matrix, crop_matrix, photometric, render_view
from .flow.geometry import apply_affine, consistency_mask, in_view, pixel_grid, sample_at, view_flow

Box = tuple[float, float, float, float]


def resized_frame_box(rng: np.random.Generator, H: int, W: int, *, size: tuple[int, int],
                      initial_size: tuple[int, int], initial_scale: tuple[float, float]) -> Box:
    """FlowE Sec. 4.1 and the PooDLe authors' code (configs/exp/poodle.yaml initial_size,
    initial_scale, initial_crop_size; src/datasets/bdd100k.py): the [H, W] frame resized to
    (int(H0 s), int(W0 s)) with s ~ U(initial_scale), then a torchvision RandomCrop of `size`
    (an integer offset, uniform). Returns the crop as a box (x0, y0, w, h) in the frame's own
    pixels; the resized frame is never materialised. A resized frame smaller than `size`
    (only in toy configs) is taken whole."""
    s = rng.uniform(*initial_scale)
    rh, rw = int(initial_size[0] * s), int(initial_size[1] * s)
    ch, cw = min(size[0], rh), min(size[1], rw)
    y0, x0 = rng.integers(0, rh - ch + 1), rng.integers(0, rw - cw + 1)
    fy, fx = rh / H, rw / W
    return x0 / fx, y0 / fy, cw / fx, ch / fy


def area_box(rng: np.random.Generator, H: int, W: int, *, size: tuple[int, int],
             area: tuple[float, float]) -> Box:
    """PooDLe Sec. 4.1 as printed: a crop of area U(area) of the frame with the view's aspect
    ratio, at a uniform position (x0, y0, w, h)."""
    a = rng.uniform(*area) * H * W
    cw, ch = min(W, np.sqrt(a * size[1] / size[0])), min(H, np.sqrt(a * size[0] / size[1]))
    return rng.uniform(0, W - cw), rng.uniform(0, H - ch), float(cw), float(ch)


def paired_views(frames1: torch.Tensor, frames2: torch.Tensor, rngs: list[np.random.Generator],
                 spec: ViewSpec, box: Callable[[np.random.Generator, int, int], Box],
                 colours: dict[str, ColourSpec]) -> dict:
    """frames [N, 3, H, W] -> {"view1", "view2": [N, 3, h, w], "A1", "A2": [N, 3, 3] with
    ``view_k(q) = frame_k(A_k q)``, "C": [N, 3, 3] pre-affine image pixel -> frame pixel
    (one for both frames), "pre1", "pre2": the coloured pre-affine images [N, 3, h, w]};
    `box(rng, H, W)` draws the crop shared by both frames, colours[k] frame k's changes."""
    H, W = frames1.shape[-2:]
    out = {key: [] for key in ("view1", "view2", "A1", "A2", "C", "pre1", "pre2")}
    for n, rng in enumerate(rngs):
        C = crop_matrix(box(rng, H, W), spec.size)
        out["C"].append(C.float())
        for key, frames in (("1", frames1), ("2", frames2)):
            pre = photometric(render_view(frames[n], C.float(), spec.size), rng, colours[key])
            affine = affine_flip_matrix(spec, rng)
            out["pre" + key].append(pre)
            out["view" + key].append(render_view(pre, affine.float(), spec.size))
            out["A" + key].append((C @ affine).float())
    return {k: torch.stack(v) for k, v in out.items()}


def pixel_scale(C: torch.Tensor) -> torch.Tensor:
    """[N, 2]: pre-affine image pixels per frame pixel along x and y (C: [N, 3, 3])."""
    return 1 / torch.stack([C[:, 0, 0], C[:, 1, 1]], dim=1)


def view_correspondence(flow_fwd: torch.Tensor, flow_bwd: torch.Tensor, A1: torch.Tensor,
                        A2: torch.Tensor, size: tuple[int, int],
                        alpha: tuple[float, float],
                        scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The flow from view 1 to view 2 on view 1's [h, w] grid and where it holds: pixels
    inside frame 1, forward-backward consistent there (occlusion test with alpha1, alpha2,
    measured in pixels scaled by `scale` [N, 2], e.g. ``pixel_scale(C)``; frame pixels when
    None), and landing inside view 2. flow_fwd / flow_bwd: frame flows [N, 2, H, W]."""
    h, w = size
    flow, valid = view_flow(flow_fwd, A1, A2, size)
    consistent = consistency_mask(flow_fwd, flow_bwd, alpha1=alpha[0], alpha2=alpha[1],
                                  scale=scale)
    grid = pixel_grid(h, w, dtype=flow_fwd.dtype)[None].expand(A1.shape[0], 2, h, w)
    seen = sample_at(consistent.float()[:, None], apply_affine(A1, grid), mode="nearest")[:, 0]
    return flow, valid & (seen > 0) & in_view(flow)


def bin_centres(A: torch.Tensor, grid: tuple[int, int],
                size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The centres of a view's feature-map bins in frame pixels, and each view's bin diagonal
    (PixPro's coordinate bookkeeping, Xie et al. 2021 Sec. 3.1; PixPro-flow
    contrast/models/PixPro.py L140-199): the [h, w] `grid` of bins tiles the view of `size`
    (H_v, W_v) pixels; A [N, 3, 3] maps view pixels to frame pixels (crop, resize, flip).
    Returns (centres [N, 2, h w] (x, y), diagonal [N] in frame pixels)."""
    h, w = grid
    sy, sx = size[0] / h, size[1] / w
    ys, xs = torch.meshgrid((torch.arange(h, dtype=A.dtype) + 0.5) * sy - 0.5,
                            (torch.arange(w, dtype=A.dtype) + 0.5) * sx - 0.5, indexing="ij")
    q = torch.stack([xs, ys]).reshape(1, 2, h * w, 1).expand(A.shape[0], 2, h * w, 1)
    centres = apply_affine(A, q)[..., 0]
    step = torch.tensor([sx, sy], dtype=A.dtype)
    return centres, (A[:, :2, :2] @ step).norm(dim=1)


def carry_points(points: torch.Tensor, flow: torch.Tensor,
                 keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """points [N, 2, M] in frame pixels moved by the frame flow [N, 2, H, W] (bilinear,
    zeros outside, as the authors' grid_sample), and whether each point's flow holds: `keep`
    [N, H, W] read at the nearest pixel (False outside the frame). -> ([N, 2, M], [N, M])."""
    p = points[..., None]  # [N, 2, M, 1]
    moved = points + sample_at(flow, p)[..., 0]
    held = sample_at(keep.float()[:, None], p, mode="nearest")[:, 0, :, 0] > 0
    return moved, held


def positive_bins(moved: torch.Tensor, held: torch.Tensor, centres: torch.Tensor,
                  diag1: torch.Tensor, diag2: torch.Tensor, ratio: float) -> torch.Tensor:
    """PixPro-flow Sec. 3, Omega_x = {y : ||x + w(x) - y|| / d < ratio} (ratio 0.7): bool
    [N, M1, M2], bin i of view 1 (carried to the other frame: `moved` [N, 2, M1], `held`
    [N, M1]) and bin j of view 2 (`centres` [N, 2, M2]) are positives. d is the larger of
    the two views' bin diagonals, in frame pixels (authors' PixPro.py L155-157, L217-222,
    as PixPro's own code); rows whose flow does not hold have no positive."""
    d = torch.maximum(diag1, diag2)[:, None, None]
    dist = (moved[:, :, :, None] - centres[:, :, None, :]).norm(dim=1) / d
    return (dist < ratio) & held[:, :, None]
