"""FlowE (Xiong et al. 2021): dense BYOL on flow-warped feature maps (Eq. 4-5, Algorithm 1).

Two frames ~0.5 s apart; one crop box shared by both frames, then an independent random
affine per view (scale 0.5-2, rotation +-30 deg, Sec. 3.2) and BYOL's colour changes. The
frame flow is carried to the views (T = A1^-1 o M o A2), predictions and target projections
are upsampled to the view grid and compared where the correspondence exists (in view,
forward-backward consistent).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import ViewSpec, photometric, render_view, view_matrix
from ..flow.geometry import apply_affine, consistency_mask, in_view, pixel_grid, sample_at, view_flow
from ..losses import dense_equivariance_loss
from .base import Method, register_method


@register_method("flowe")
class FlowE(Method):
    dense = True
    needs_flow = True

    def __init__(self, *, view_size=(512, 1024), crop_scale=(0.75, 1.25),
                 affine_scale=(0.5, 2.0), rotation: float = 30.0, alpha=(0.01, 0.5),
                 output_stride: int = 8, **kw):
        super().__init__(output_stride=output_stride, **kw)
        self.spec = ViewSpec(size=tuple(view_size), scale=tuple(affine_scale),
                             rotation=rotation, flip=False)
        self.crop_scale, self.alpha = tuple(crop_scale), tuple(alpha)

    def make_views(self, frames1, frames2, rng: np.random.Generator, *, flow_fwd=None,
                   flow_bwd=None) -> dict:
        H, W = frames1.shape[-2:]
        h, w = self.spec.size
        out = {"view1": [], "view2": [], "A1": [], "A2": []}
        for n in range(frames1.shape[0]):
            # Sec. 4.1: random scale 0.75-1.25x, then a crop at the same place in both frames
            s = rng.uniform(*self.crop_scale)
            cw, ch = min(W, w / s), min(H, h / s)
            box = (rng.uniform(0, W - cw), rng.uniform(0, H - ch), cw, ch)
            for key, frames, blur, sol in (("1", frames1, 1.0, 0.0), ("2", frames2, 0.1, 0.2)):
                A = view_matrix((H, W), self.spec, rng, box=box)
                view = render_view(frames[n], A, self.spec.size)
                out["view" + key].append(photometric(view, rng, blur_p=blur, solarize_p=sol))
                out["A" + key].append(A)
        views = {k: torch.stack(v) for k, v in out.items()}
        flow, valid = view_flow(flow_fwd, views["A1"], views["A2"], self.spec.size)
        consistent = consistency_mask(flow_fwd, flow_bwd, alpha1=self.alpha[0],
                                      alpha2=self.alpha[1]).float()[:, None]
        grid = pixel_grid(h, w)[None].expand(frames1.shape[0], 2, h, w)
        seen = sample_at(consistent, apply_affine(views["A1"], grid), mode="nearest")[:, 0] > 0
        views["flow"], views["valid"] = flow, valid & seen & in_view(flow)
        return views

    def losses(self, views: dict) -> dict[str, torch.Tensor]:
        v1, v2 = views["view1"], views["view2"]
        size = v1.shape[-2:]
        p1 = self.predictor(self.projector(self.encoder(v1)["res5"]))
        with torch.no_grad():
            z2 = self.target_projector(self.target_encoder(v2)["res5"])
        up = dict(size=size, mode="bilinear", align_corners=False)  # Algorithm 1: upsample
        loss = dense_equivariance_loss(F.interpolate(p1, **up), F.interpolate(z2, **up),
                                       views["flow"], views["valid"])
        return {"loss_dense": loss}
