"""PixPro with optical flow (Takahashi et al., seed paper: Sec. 3, Eq. 1-3, Algorithm 1;
authors' code rioyokotalab/PixPro-with-OpticalFlow) and plain PixPro (Xie et al. 2021,
zdaxie/PixPro): two views of the first and the last frame of a k-frame clip, bins of view
1 carried to the last frame by the chained flow (Eq. 1) are positives of the view-2 bins
within 0.7 bin diagonals (Omega, Sec. 3) where the forward-backward test holds (Eq. 3);
loss: PixPro's pixel-propagation consistency, symmetric. ``pixpro`` is k = 1: two crops of
one frame, PixPro's geometric positives."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import COLOURS, ColourSpec, ViewSpec, crop_views
from ..correspondence import bin_centres, carry_points, positive_bins
from ..flow.geometry import chain, consistency_mask
from ..losses import pixel_consistency_loss
from .base import OnlineTargetMethod, register_method

MASK_UNITS = ("normalised", "pixels")


def zero_residual_batchnorm(encoder: nn.Module) -> None:
    """The last BatchNorm of every residual block starts at gamma 0, so each block starts as
    the identity (Goyal et al. 2017; torchvision's ``zero_init_residual``)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck
    for m in encoder.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        elif isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)


def pixel_propagation(x: torch.Tensor, value: torch.Tensor, *, gamma: float = 2.0,
                      clamp: float = 0.0) -> torch.Tensor:
    """PixPro's pixel propagation module (Xie et al. 2021, Eq. 3-4; authors' featprop):
    y_i = sum_j s(x_i, x_j) g(x_j) with s = max(cos(x_i, x_j), clamp)^gamma and g(x_j) the
    L2-normalised value transform.

    x: projections [N, C, H, W]; value: the value transform of x, g before normalisation
    [N, C, H, W] -> y [N, C, H, W].
    """
    N, C, H, W = x.shape
    g = F.normalize(value, dim=1).flatten(2)  # [N, C, HW]
    f = F.normalize(x, dim=1).flatten(2)
    s = torch.bmm(f.transpose(1, 2), f).clamp(min=clamp) ** gamma  # [N, HW (i), HW (j)]
    return torch.bmm(g, s.transpose(1, 2)).view(N, C, H, W)


@dataclass(frozen=True)
class PixProViews:
    """The view maker (plain data): view 1 from the clip's first frame, view 2 from its last
    (BYOL's RandomResizedCrop, flip and asymmetric colour: the authors' --aug BYOL), the
    chained flow both ways (Eq. 1) with its forward-backward test (Eq. 3), and the positive
    bins 1 -> 2 and 2 -> 1 on the [h, w] feature `grid` of a view."""
    spec: ViewSpec
    colours: dict[str, ColourSpec]
    grid: tuple[int, int]
    alpha: tuple[float, float]
    occlusion_mask: bool = True
    mask_units: str = "normalised"
    pos_ratio: float = 0.7

    def _consistent(self, fwd: torch.Tensor, bwd: torch.Tensor) -> torch.Tensor:
        """Eq. 3 where the forward flow `fwd` holds. ``normalised`` (the authors'
        contrast/util.py forward_backward_consistency): flows in [-1, 1] units,
        2 / (size - 1) per pixel, and alpha2 divided by the frame diagonal in pixels;
        ``pixels``: Eq. 3 as printed, in frame pixels."""
        if self.mask_units == "pixels":
            return consistency_mask(fwd, bwd, alpha1=self.alpha[0], alpha2=self.alpha[1])
        H, W = fwd.shape[-2:]
        scale = torch.tensor([[2 / (W - 1), 2 / (H - 1)]]).expand(fwd.shape[0], 2)
        return consistency_mask(fwd, bwd, alpha1=self.alpha[0],
                                alpha2=self.alpha[1] / math.hypot(H, W), scale=scale)

    def __call__(self, frames, rngs, *, flow_fwd=None, flow_bwd=None) -> dict:
        """frames [N, K, 3, H, W]; flows [N, K-1, 2, H, W] (none for K = 1)."""
        views = crop_views({"1": frames[:, 0], "2": frames[:, -1]}, rngs, self.spec,
                           self.colours, matrices=True)
        N, _, _, H, W = frames.shape
        if flow_fwd is None or flow_fwd.shape[1] == 0:  # one frame: PixPro's positives
            fwd = bwd = torch.zeros(N, 2, H, W)
            hold_fwd = hold_bwd = torch.ones(N, H, W, dtype=torch.bool)
        else:  # Eq. 1 both ways: frame 1 -> k and k -> 1; bins that leave a frame fail
            fwd, hold_fwd = chain(list(flow_fwd.unbind(1)))
            bwd, hold_bwd = chain(list(flow_bwd.flip(1).unbind(1)))
            if self.occlusion_mask:
                hold_fwd = hold_fwd & self._consistent(fwd, bwd)
                hold_bwd = hold_bwd & self._consistent(bwd, fwd)
        c1, d1 = bin_centres(views.pop("A1"), self.grid, self.spec.size)
        c2, d2 = bin_centres(views.pop("A2"), self.grid, self.spec.size)
        moved1, held1 = carry_points(c1, fwd, hold_fwd)
        moved2, held2 = carry_points(c2, bwd, hold_bwd)
        views["pos12"] = positive_bins(moved1, held1, c2, d1, d2, self.pos_ratio)
        views["pos21"] = positive_bins(moved2, held2, c1, d2, d1, self.pos_ratio)
        if flow_fwd is not None:  # the share of bins whose flow holds, for the run's health
            views["held"] = torch.cat([held1, held2], 1).float().mean(1)
        return views


@register_method("pixpro_flow")
class PixProFlow(OnlineTargetMethod):
    samples = "clips"
    needs_flow = True
    dense = True
    has_predictor = False  # PixPro: the PPM instead of BYOL's predictor
    # the authors convert encoder, projector and their momentum copies to SyncBatchNorm
    # (contrast/models/PixPro.py L289-292)
    sync_batchnorm = True
    # the projection (what collapses at a too-high lr: mean pairwise cosine 0.997 at LARS 4.0
    # and batch 8, issue 28) and, logged only, the PPM's output: a similarity-weighted mean
    # of value vectors over the image, smooth by construction (mean pairwise cosine 0.98 in
    # the study's runs at the authors' lr, whose projection stays at 0.5)
    health_outputs = {"projection": "projector", "ppm": "value_transform"}
    collapse_outputs = ("projection",)

    def __init__(self, *, view_size=(224, 224), area=(0.08, 1.0), alpha=(0.01, 0.5),
                 occlusion_mask: bool = True, mask_units: str = "normalised",
                 pos_ratio: float = 0.7, gamma: float = 2.0, clamp: float = 0.0,
                 zero_init_residual: bool = True, **kw):
        super().__init__(**kw)
        if zero_init_residual:  # the authors' contrast/resnet.py L164-173 (both repos)
            zero_residual_batchnorm(self.encoder)
            self.target_encoder.load_state_dict(self.encoder.state_dict())
        if mask_units not in MASK_UNITS:
            raise ValueError(f"mask_units {mask_units!r}: one of {', '.join(MASK_UNITS)}")
        out_dim = self.projector[-1].out_channels
        self.value_transform = nn.Conv2d(out_dim, out_dim, 1)  # --pixpro-transform-layer 1
        self.gamma, self.clamp = gamma, clamp
        stride = self.encoder.output_stride
        self.view_maker = PixProViews(
            ViewSpec(size=tuple(view_size), area=tuple(area)), COLOURS["byol"],
            grid=tuple(math.ceil(n / stride) for n in view_size), alpha=tuple(alpha),
            occlusion_mask=occlusion_mask, mask_units=mask_units, pos_ratio=pos_ratio)

    def _online(self, x):
        h = self.encoder(x)["res5"]
        z = self.projector(h)
        return h, z, pixel_propagation(z, self.value_transform(z), gamma=self.gamma,
                                       clamp=self.clamp)

    @torch.no_grad()
    def _target(self, x):
        return self.target_projector(self.target_encoder(x)["res5"])

    def losses(self, views: dict) -> dict[str, torch.Tensor]:
        v1, v2 = views["view1"], views["view2"]
        t1, t2 = self._target(v1), self._target(v2)
        h1, z1, y1 = self._online(v1)  # y: the PPM's output, the loss's online side
        y2 = self._online(v2)[2]
        pos12, pos21 = views["pos12"], views["pos21"]
        self.observe(outputs={"projection": z1, "ppm": y1}, embeddings=h1,
                     positives=pos12.sum((1, 2)).float().mean(),
                     mask_kept=views["held"].mean() if "held" in views else None)
        return {"loss_pixpro": pixel_consistency_loss(y1, t2, pos12)
                + pixel_consistency_loss(y2, t1, pos21)}


@register_method("pixpro")
class PixPro(PixProFlow):
    """PixPro-flow Table 1 "PixPro": k = 1, two crops of one frame, no flow."""
    needs_flow = False
