"""FlowE (Xiong et al. 2021): dense BYOL on flow-warped feature maps (Eq. 4-5, Algorithm 1).

Two frames ~0.5 s apart. Sec. 4.1: each frame upsampled to 1080x1920, scaled by
U(0.75, 1.25) and cropped to 512x1024 at the same place in both frames (the FlowE
re-implementation in the PooDLe release does the same: RandomResize of the short side to
810-1350 px); SimCLR's colour changes on each frame (Sec. 3.3); then an independent random
affine per view (scale 0.5-2, rotation +-30 deg, Sec. 3.2). The frame flow is carried to the
views (T = A1^-1 o M o A2), predictions and target projections are upsampled to the view
grid and compared where the correspondence exists (in view, forward-backward consistent in
the resized frame's pixels).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch.nn.functional as F

from ..augment import COLOURS, ColourSpec, ViewSpec
from ..correspondence import paired_views, pixel_scale, resized_frame_box, view_correspondence
from ..losses import dense_equivariance_loss
from .base import OnlineTargetMethod, register_method


def upsampled(x, size):
    """Algorithm 1: features are bilinearly upsampled to the view grid before warping."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class FlowEViews:
    """FlowE's view maker (plain data, so DataLoader workers run it): paired views with one
    crop box (`box`), each frame's colour changes, an affine per view, and the view flow 1 ->
    2 with where it holds (occlusion thresholds `alpha` in the resized frame's pixels)."""
    spec: ViewSpec
    box: Callable
    colours: dict[str, ColourSpec]
    alpha: tuple[float, float]

    def __call__(self, frames, rngs, *, flow_fwd, flow_bwd) -> dict:
        """frames [N, 2, 3, H, W], flows [N, 1, 2, H, W] (pairs)."""
        views = paired_views(frames[:, 0], frames[:, 1], rngs, self.spec, self.box,
                             self.colours)
        flow_fwd, flow_bwd = flow_fwd[:, 0], flow_bwd[:, 0]
        del views["pre1"], views["pre2"]  # PooDLe's subcrops use them, FlowE does not
        views["flow"], views["valid"] = view_correspondence(
            flow_fwd, flow_bwd, views["A1"], views["A2"], self.spec.size, self.alpha,
            scale=pixel_scale(views["C"]))
        return views


@register_method("flowe")
class FlowE(OnlineTargetMethod):
    dense = True
    needs_flow = True

    def __init__(self, *, view_size=(512, 1024), initial_size=(1080, 1920),
                 initial_scale=(0.75, 1.25), affine_scale=(0.5, 2.0), rotation: float = 30.0,
                 flip: bool = False, alpha=(0.01, 0.5), colour: str = "simclr",
                 output_stride: int = 8, **kw):
        super().__init__(output_stride=output_stride, **kw)
        spec = ViewSpec(size=tuple(view_size), scale=tuple(affine_scale), rotation=rotation,
                        flip=bool(flip))
        box = functools.partial(resized_frame_box, size=spec.size,
                                initial_size=tuple(initial_size),
                                initial_scale=tuple(initial_scale))
        self.view_maker = FlowEViews(spec, box, COLOURS[colour], tuple(alpha))

    def losses(self, views: dict):
        v1, v2 = views["view1"], views["view2"]
        h1 = self.encoder(v1)["res5"]
        z1 = self.projector(h1)
        p1 = self.predictor(z1)
        z2 = self.target_projector(self.target_encoder(v2)["res5"]).detach()
        self.observe(outputs={"projection": z1, "prediction": p1}, embeddings=h1,
                     mask_kept=views["valid"].float().mean())
        size = v1.shape[-2:]
        return {"loss_dense": dense_equivariance_loss(upsampled(p1, size), upsampled(z2, size),
                                                      views["flow"], views["valid"])}
