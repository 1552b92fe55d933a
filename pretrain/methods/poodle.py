"""PooDLe (Wang, Hoang et al.): a dense flow-equivariance loss through the spatial decoder
module plus a pooled BYOL loss on K flow-informed subcrop pairs (Eq. 1-3, App. A).

- Global views: one crop of area 0.16-0.45 of the frame at the same place in both frames
  (Sec. 4.1), resized to 512x1024, an affine per view (scale 0.9-1.1, rotation +-10 deg,
  App. A) and BYOL's colour changes.
- Dense (Eq. 1): encoder -> SDM (output stride 8; the authors' order up(g(z)) + lateral
  by default, ``decoder_order="paper"`` for Eq. 3's text) -> 1x1-conv projector / predictor,
  upsampled to the view grid, compared through the view flow where it is in view and
  forward-backward consistent (alpha1 = 0.1, alpha2 = 0.5, App. A), in both directions.
- Pooled (Eq. 2): K = 6 subcrop pairs. A centre is drawn in view 2 from a grid of cells of
  side min(h, w) sqrt((s_min + s_max) / 2), cells without replacement (Sec. 3), carried to
  view 1 through the flow, jittered by up to 10 % of the view size; around each centre a
  RandomResizedCrop of area 0.05-0.3 of the global view, ratio 3/4-4/3, to 192x192
  (App. A). The pooled projector / predictor are MLPs on the average-pooled res5.
- Loss: 0.5 L_dense + 0.5 L_pool, both symmetric (App. A "Loss details").
"""
from __future__ import annotations

import math

import numpy as np
import torch

from core.decoders import SpatialDecoder

from ..augment import ViewSpec, photometric, render_view, view_matrix
from ..correspondence import VIEW_COLOUR, paired_views, view_correspondence
from ..flow.geometry import sample_at
from ..losses import dense_equivariance_loss, pooled_loss
from ..models import mlp
from .base import OnlineTargetMethod, register_method
from .flowe import upsampled


def grid_centres(size: tuple[int, int], area: tuple[float, float], k: int,
                 rng: np.random.Generator) -> np.ndarray:
    """PooDLe Sec. 3 grid sampling: k centres (x, y) in pixels of an [h, w] view, one per
    cell of side d = min(h, w) sqrt((s_min + s_max) / 2), cells without replacement (with
    replacement only once every cell is taken)."""
    h, w = size
    d = min(h, w) * math.sqrt(sum(area) / 2)
    ny, nx = max(1, int(h // d)), max(1, int(w // d))
    order = rng.permutation(ny * nx)
    cells = np.concatenate([order, rng.integers(ny * nx, size=max(0, k - ny * nx))])[:k]
    cy, cx = np.divmod(cells, nx)
    x = (cx + rng.uniform(size=k)) * (w / nx) - 0.5  # pixel-centre coordinates
    y = (cy + rng.uniform(size=k)) * (h / ny) - 0.5
    return np.stack([x, y], axis=1)


def carry_points(q2: torch.Tensor, A2: torch.Tensor, A1: torch.Tensor,
                 flow_bwd: torch.Tensor) -> torch.Tensor:
    """Points q2 [k, 2] of view 2 -> view 1 through frame 2, the backward flow [2, H, W] and
    frame 1 (A_k [3, 3]: view k pixel -> frame k pixel): the flow-informed centre of PooDLe
    Sec. 3."""
    p2 = q2 @ A2[:2, :2].T + A2[:2, 2]
    m = sample_at(flow_bwd[None], p2.T.reshape(1, 2, 1, -1), padding_mode="border")
    p1 = p2 + m[0, :, 0].T
    return (p1 - A1[:2, 2]) @ torch.linalg.inv(A1[:2, :2]).T


def centred_box(centre, size: tuple[int, int], area: tuple[float, float],
                ratio: tuple[float, float], rng: np.random.Generator):
    """A RandomResizedCrop box (x0, y0, w, h) of the given area fraction of an [h, w] view,
    centred on `centre` and kept inside the view."""
    h, w = size
    a = rng.uniform(*area) * h * w
    r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    bw, bh = min(w, math.sqrt(a * r)), min(h, math.sqrt(a / r))
    x0 = float(np.clip(centre[0] + 0.5 - bw / 2, 0, w - bw))
    y0 = float(np.clip(centre[1] + 0.5 - bh / 2, 0, h - bh))
    return x0, y0, bw, bh


@register_method("poodle")
class PooDLe(OnlineTargetMethod):
    dense = True
    needs_flow = True

    def __init__(self, *, view_size=(512, 1024), crop_area=(0.16, 0.45),
                 affine_scale=(0.9, 1.1), rotation: float = 10.0, alpha=(0.1, 0.5),
                 subcrops: int = 6, subcrop_area=(0.05, 0.3), subcrop_size=(192, 192),
                 jitter: float = 0.1, dense_weight: float = 0.5, pooled_weight: float = 0.5,
                 decoder_reduction: int = 8, decoder_order: str = "authors",
                 hidden: int = 4096, out_dim: int = 256, **kw):
        super().__init__(hidden=hidden, out_dim=out_dim, **kw)
        self.spec = ViewSpec(size=tuple(view_size), scale=tuple(affine_scale),
                             rotation=rotation, flip=False)
        self.sub_spec = ViewSpec(size=tuple(subcrop_size))  # flip, no affine
        self.crop_area, self.alpha = tuple(crop_area), tuple(alpha)
        self.k, self.subcrop_area, self.jitter = int(subcrops), tuple(subcrop_area), jitter
        self.weights = (dense_weight, pooled_weight)
        self.decoder = SpatialDecoder.for_trunk(self.encoder.output_shape(),
                                                reduction=decoder_reduction,
                                                order=decoder_order)
        channels = self.encoder.channels["res5"]
        self.pool_projector = mlp(channels, hidden, out_dim)
        self.pool_predictor = mlp(out_dim, hidden, out_dim)
        self.add_target("decoder")
        self.add_target("pool_projector")

    def _box(self, rng, H: int, W: int):
        h, w = self.spec.size
        a = rng.uniform(*self.crop_area) * H * W
        cw, ch = min(W, math.sqrt(a * w / h)), min(H, math.sqrt(a * h / w))
        return rng.uniform(0, W - cw), rng.uniform(0, H - ch), cw, ch

    def _subcrops(self, frames1, frames2, views, flow_bwd, rngs):
        """K subcrop pairs per frame pair: [N, K, 3, s, s] for each view."""
        h, w = self.spec.size
        out = {"sub1": [], "sub2": []}
        for n, rng in enumerate(rngs):
            c2 = torch.as_tensor(grid_centres((h, w), self.subcrop_area, self.k, rng),
                                 dtype=torch.float32)
            c1 = carry_points(c2, views["A2"][n], views["A1"][n], flow_bwd[n]).numpy()
            c1 = c1 + rng.uniform(-self.jitter, self.jitter, size=(self.k, 2)) * (w, h)
            c1 = np.clip(c1, 0, (w - 1, h - 1))  # both centres inside their views
            for key, frames, centres in (("1", frames1, c1), ("2", frames2, c2.numpy())):
                crops = []
                for c in centres:
                    box = centred_box(c, (h, w), self.subcrop_area, self.sub_spec.ratio, rng)
                    S = view_matrix((h, w), self.sub_spec, rng, box=box)
                    crop = render_view(frames[n], views["A" + key][n] @ S, self.sub_spec.size)
                    crops.append(photometric(crop, rng, **VIEW_COLOUR[key]))
                out["sub" + key].append(torch.stack(crops))
        return {k: torch.stack(v) for k, v in out.items()}

    def make_views(self, frames1, frames2, rngs, *, flow_fwd=None, flow_bwd=None) -> dict:
        views = paired_views(frames1, frames2, rngs, self.spec, self._box)
        size = self.spec.size
        views["flow12"], views["valid12"] = view_correspondence(
            flow_fwd, flow_bwd, views["A1"], views["A2"], size, self.alpha)
        views["flow21"], views["valid21"] = view_correspondence(
            flow_bwd, flow_fwd, views["A2"], views["A1"], size, self.alpha)
        views.update(self._subcrops(frames1, frames2, views, flow_bwd, rngs))
        return views

    def _dense(self, x, online: bool, observe: bool = False):
        if online:
            features = self.encoder(x)
            z = self.projector(self.decoder(features))
            if observe:
                self.observe(projections=z, embeddings=features["res5"])
            return upsampled(self.predictor(z), x.shape[-2:])
        z = self.target_projector(self.target_decoder(self.target_encoder(x)))
        return upsampled(z.detach(), x.shape[-2:])

    def _pooled(self, x, online: bool):
        if online:
            return self.pool_predictor(self.pool_projector(self.encoder(x)["res5"].mean((2, 3))))
        return self.target_pool_projector(self.target_encoder(x)["res5"].mean((2, 3))).detach()

    def losses(self, views: dict) -> dict[str, torch.Tensor]:
        v1, v2 = views["view1"], views["view2"]
        kept = (views["valid12"].float().mean() + views["valid21"].float().mean()) / 2
        self.observe(mask_kept=kept)
        dense = (dense_equivariance_loss(self._dense(v1, True, observe=True),
                                         self._dense(v2, False),
                                         views["flow12"], views["valid12"])
                 + dense_equivariance_loss(self._dense(v2, True), self._dense(v1, False),
                                           views["flow21"], views["valid21"]))
        s1, s2 = views["sub1"], views["sub2"]
        n, k = s1.shape[:2]
        q1, q2 = (self._pooled(s.flatten(0, 1), True).unflatten(0, (n, k)) for s in (s1, s2))
        z1, z2 = (self._pooled(s.flatten(0, 1), False).unflatten(0, (n, k)) for s in (s1, s2))
        pooled = pooled_loss(q1, z2) + pooled_loss(q2, z1)
        return {"loss_dense": self.weights[0] * dense, "loss_pool": self.weights[1] * pooled}

    def decoder_entry(self) -> dict:
        return self.decoder.checkpoint_entry()
