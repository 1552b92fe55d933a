"""FlowE (Xiong et al. 2021): dense BYOL on flow-warped feature maps (Eq. 4-5, Algorithm 1).

Two frames ~0.5 s apart; one crop box shared by both frames, then an independent random
affine per view (scale 0.5-2, rotation +-30 deg, Sec. 3.2) and BYOL's colour changes. The
frame flow is carried to the views (T = A1^-1 o M o A2), predictions and target projections
are upsampled to the view grid and compared where the correspondence exists (in view,
forward-backward consistent).
"""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from ..augment import ViewSpec
from ..correspondence import paired_views, view_correspondence
from ..losses import dense_equivariance_loss
from .base import OnlineTargetMethod, register_method


def upsampled(x, size):
    """Algorithm 1: features are bilinearly upsampled to the view grid before warping."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@register_method("flowe")
class FlowE(OnlineTargetMethod):
    dense = True
    needs_flow = True

    def __init__(self, *, view_size=(512, 1024), crop_scale=(0.75, 1.25),
                 affine_scale=(0.5, 2.0), rotation: float = 30.0, alpha=(0.01, 0.5),
                 output_stride: int = 8, **kw):
        super().__init__(output_stride=output_stride, **kw)
        self.spec = ViewSpec(size=tuple(view_size), scale=tuple(affine_scale),
                             rotation=rotation, flip=False)
        self.crop_scale, self.alpha = tuple(crop_scale), tuple(alpha)

    def _box(self, rng: np.random.Generator, H: int, W: int):
        # Sec. 4.1: random scale 0.75-1.25x, then a crop at the same place in both frames
        h, w = self.spec.size
        s = rng.uniform(*self.crop_scale)
        cw, ch = min(W, w / s), min(H, h / s)
        return rng.uniform(0, W - cw), rng.uniform(0, H - ch), cw, ch

    def make_views(self, frames1, frames2, rngs, *, flow_fwd=None, flow_bwd=None) -> dict:
        views = paired_views(frames1, frames2, rngs, self.spec, self._box)
        views["flow"], views["valid"] = view_correspondence(
            flow_fwd, flow_bwd, views["A1"], views["A2"], self.spec.size, self.alpha)
        return views

    def losses(self, views: dict):
        v1, v2 = views["view1"], views["view2"]
        h1 = self.encoder(v1)["res5"]
        z1 = self.projector(h1)
        p1 = self.predictor(z1)
        z2 = self.target_projector(self.target_encoder(v2)["res5"]).detach()
        self.observe(projections=z1, embeddings=h1, mask_kept=views["valid"].float().mean())
        size = v1.shape[-2:]
        return {"loss_dense": dense_equivariance_loss(upsampled(p1, size), upsampled(z2, size),
                                                      views["flow"], views["valid"])}
