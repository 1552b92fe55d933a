"""Paired views of a frame pair and the dense correspondence between them, shared by the
flow-equivariance methods (FlowE Sec. 3.2 / Eq. 4, PooDLe Sec. 3 / Eq. 1): one crop box at
the same place in both frames, an independent affine per view, BYOL's colour changes, and
the view-to-view flow with its validity (in view, forward-backward consistent)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .augment import ViewSpec, photometric, render_view, view_matrix
from .flow.geometry import apply_affine, consistency_mask, in_view, pixel_grid, sample_at, view_flow

Box = tuple[float, float, float, float]
# BYOL Table 6: blur p = 1.0 / 0.1 and solarize p = 0 / 0.2 for the first / second view
VIEW_COLOUR = {"1": dict(blur_p=1.0, solarize_p=0.0), "2": dict(blur_p=0.1, solarize_p=0.2)}


def paired_views(frames1: torch.Tensor, frames2: torch.Tensor, rngs: list[np.random.Generator],
                 spec: ViewSpec, box: Callable[[np.random.Generator, int, int], Box]) -> dict:
    """frames [N, 3, H, W] -> {"view1", "view2": [N, 3, h, w], "A1", "A2": [N, 3, 3]} with
    ``view_k(q) = frame_k(A_k q)``; `box(rng, H, W)` draws the crop shared by both frames."""
    H, W = frames1.shape[-2:]
    out = {"view1": [], "view2": [], "A1": [], "A2": []}
    for n, rng in enumerate(rngs):
        shared = box(rng, H, W)
        for key, frames in (("1", frames1), ("2", frames2)):
            A = view_matrix((H, W), spec, rng, box=shared)
            view = render_view(frames[n], A, spec.size)
            out["view" + key].append(photometric(view, rng, **VIEW_COLOUR[key]))
            out["A" + key].append(A)
    return {k: torch.stack(v) for k, v in out.items()}


def view_correspondence(flow_fwd: torch.Tensor, flow_bwd: torch.Tensor, A1: torch.Tensor,
                        A2: torch.Tensor, size: tuple[int, int],
                        alpha: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The flow from view 1 to view 2 on view 1's [h, w] grid and where it holds: pixels
    inside frame 1, forward-backward consistent there (occlusion test with alpha1, alpha2),
    and landing inside view 2. flow_fwd / flow_bwd: frame flows [N, 2, H, W]."""
    h, w = size
    flow, valid = view_flow(flow_fwd, A1, A2, size)
    consistent = consistency_mask(flow_fwd, flow_bwd, alpha1=alpha[0], alpha2=alpha[1])
    grid = pixel_grid(h, w, dtype=flow_fwd.dtype)[None].expand(A1.shape[0], 2, h, w)
    seen = sample_at(consistent.float()[:, None], apply_affine(A1, grid), mode="nearest")[:, 0]
    return flow, valid & (seen > 0) & in_view(flow)
