"""Flow geometry on torch tensors: warping, forward-backward consistency, chaining, and
composition with the affine maps of augmented views.

Conventions (everywhere in `pretrain`): flow is float [B, 2, H, W] in pixels, x first;
pixel (0, 0) is the centre of the top-left pixel; ``flow_fwd`` from image1 to image2 means
image1(p) ~ image2(p + flow_fwd(p)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_grid(height: int, width: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """[2, H, W] pixel coordinates (x, y)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                            torch.arange(width, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs, ys])


def sample_at(x: torch.Tensor, points: torch.Tensor, *, mode: str = "bilinear",
              padding_mode: str = "zeros") -> torch.Tensor:
    """x [B, C, H, W] read at pixel positions points [B, 2, h, w] -> [B, C, h, w]."""
    H, W = x.shape[-2:]
    gx = points[:, 0] * (2 / max(W - 1, 1)) - 1
    gy = points[:, 1] * (2 / max(H - 1, 1)) - 1
    grid = torch.stack([gx, gy], dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def warp(x: torch.Tensor, flow: torch.Tensor, *, mode: str = "bilinear",
         padding_mode: str = "zeros") -> torch.Tensor:
    """out(p) = x(p + flow(p)), bilinear. With flow_fwd (image1 -> image2),
    ``warp(image2, flow_fwd) ~ image1`` where p is visible in both.

    x [B, C, H, W] and flow [B, 2, H, W] of the same size. Positions outside x read zeros
    (``padding_mode="zeros"``; between the last pixel centre and the border the sample
    fades to zero) or the nearest border pixel (``"border"``); ``in_view`` says which
    positions are inside.
    """
    if x.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"warp: x {tuple(x.shape)} and flow {tuple(flow.shape)} differ in size")
    grid = pixel_grid(*flow.shape[-2:], device=flow.device, dtype=flow.dtype)
    return sample_at(x, grid + flow, mode=mode, padding_mode=padding_mode)


def in_view(flow: torch.Tensor) -> torch.Tensor:
    """bool [B, H, W]: p + flow(p) lies inside the image (between the outer pixel centres)."""
    H, W = flow.shape[-2:]
    grid = pixel_grid(H, W, device=flow.device, dtype=flow.dtype)
    q = grid + flow
    return (q[:, 0] >= 0) & (q[:, 0] <= W - 1) & (q[:, 1] >= 0) & (q[:, 1] <= H - 1)


def consistency_mask(flow_fwd: torch.Tensor, flow_bwd: torch.Tensor, *, alpha1: float,
                     alpha2: float, scale: torch.Tensor | None = None) -> torch.Tensor:
    """bool [B, H, W], True where the forward flow is trusted (not occluded, in view):

        |w + w_hat(p + w)|^2 < alpha1 (|w|^2 + |w_hat(p + w)|^2) + alpha2

    with w = flow_fwd(p), w_hat = flow_bwd. PixPro-flow Eq. 3 (alpha1 = 0.01, alpha2 = 0.5),
    PiCO Eq. 3 (gamma = alpha1 = 0, delta = alpha2 = 4), PooDLe App. A (alpha1 = 0.1,
    alpha2 = 0.5); Sundaram et al. 2010 use 0.01 and 0.5. The lengths are in the flows' pixels,
    or in pixels of an image resized by `scale` [B, 2] (x, y factors): alpha2 is in pixels^2,
    so the test depends on the resolution it is measured at.
    """
    back = warp(flow_bwd, flow_fwd, padding_mode="border")
    fwd = flow_fwd
    if scale is not None:
        factor = scale.to(flow_fwd)[:, :, None, None]
        fwd, back = fwd * factor, back * factor
    lhs = (fwd + back).pow(2).sum(1)
    rhs = alpha1 * (fwd.pow(2).sum(1) + back.pow(2).sum(1)) + alpha2
    return (lhs < rhs) & in_view(flow_fwd)


def chain(flows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Compose one-step flows t -> t+1 -> ... -> t+k into the flow t -> t+k (PixPro-flow
    Eq. 1): x_{i+1} = x_i + w_i(x_i). Returns (flow [B, 2, H, W], valid bool [B, H, W]);
    valid is False once a point has left the view of an intermediate frame."""
    if not flows:
        raise ValueError("chain: no flows")
    grid = pixel_grid(*flows[0].shape[-2:], device=flows[0].device, dtype=flows[0].dtype)
    total = flows[0].clone()
    valid = in_view(total)
    for w in flows[1:]:
        total = total + sample_at(w, grid + total, padding_mode="border")
        valid &= in_view(total)
    return total, valid


def apply_affine(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """matrix [B, 3, 3] (homogeneous, last row 0 0 1) applied to points [B, 2, h, w]."""
    return (torch.einsum("bij,bjhw->bihw", matrix[:, :2, :2], points)
            + matrix[:, :2, 2, None, None])


def view_flow(flow: torch.Tensor, view1: torch.Tensor, view2: torch.Tensor,
              size1: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The flow between two augmented views of a frame pair (FlowE Eq. 4, T = A1^-1 o M o A2
    written for sampling maps).

    ``view_k(q) = frame_k(A_k q)``: `view1`, `view2` are [B, 3, 3] maps from view pixels to
    frame pixels (crop, resize, flip, rotation, scale). With frame1(p) ~ frame2(p + M(p)),
    the view flow is F(q) = A2^-1 (A1 q + M(A1 q)) - q on the [h1, w1] grid of view 1.
    Returns (flow [B, 2, h1, w1], valid [B, h1, w1]: A1 q falls in frame 1 and the target
    inside view 2, whose size is read from nothing: check it with ``in_view`` on view 2's
    grid if it differs from view 1's).
    """
    h, w = size1
    q = pixel_grid(h, w, device=flow.device, dtype=flow.dtype).expand(flow.shape[0], 2, h, w)
    p = apply_affine(view1, q)
    H, W = flow.shape[-2:]
    inside = (p[:, 0] >= 0) & (p[:, 0] <= W - 1) & (p[:, 1] >= 0) & (p[:, 1] <= H - 1)
    target = apply_affine(torch.linalg.inv(view2), p + sample_at(flow, p, padding_mode="border"))
    return target - q, inside
