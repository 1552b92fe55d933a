"""BYOL (Grill et al. 2020) and the two video variants of FlowE Table 1: ``byol`` (video
frames used as images: both views from one frame), ``byol_crop`` (smaller crops) and
``byol_video`` (the two views from two neighbouring frames). Symmetric loss on pooled
features (BYOL Eq. 2)."""
from __future__ import annotations

import torch

from ..augment import COLOURS, CropViews, ViewSpec
from ..losses import byol_loss
from .base import OnlineTargetMethod, register_method


@register_method("byol")
class BYOL(OnlineTargetMethod):
    area = (0.08, 1.0)  # BYOL's RandomResizedCrop
    two_frames = False

    def __init__(self, *, view_size=(224, 224), **kw):
        super().__init__(**kw)
        self.view_maker = CropViews(ViewSpec(size=tuple(view_size), area=self.area),
                                    COLOURS["byol"], two_frames=self.two_frames)

    def _online(self, x):
        """Pooled res5 embedding h, projection z and prediction q(z) of the online network."""
        h = self.encoder(x)["res5"].mean(dim=(2, 3))
        z = self.projector(h)
        return h, z, self.predictor(z)

    def _target(self, x):
        return self.target_projector(self.target_encoder(x)["res5"].mean(dim=(2, 3))).detach()

    def losses(self, views: dict) -> dict[str, torch.Tensor]:
        v1, v2 = views["view1"], views["view2"]
        with torch.no_grad():
            t1, t2 = self._target(v1), self._target(v2)
        h1, z1, q1 = self._online(v1)
        q2 = self._online(v2)[2]
        self.observe(outputs={"projection": z1, "prediction": q1}, embeddings=h1)
        return {"loss_byol": byol_loss(q1, t2) + byol_loss(q2, t1)}


@register_method("byol_crop")
class BYOLCrop(BYOL):
    """FlowE Table 1 "BYOL (crop)": smaller crops of the frame (area 0.05-0.3 here, the
    subcrop range PooDLe App. A uses; FlowE does not print its range)."""
    area = (0.05, 0.3)


@register_method("byol_video")
class BYOLVideo(BYOLCrop):
    """FlowE Table 1 "BYOL (crop w/ video)": the two crops come from two neighbouring frames."""
    two_frames = True
