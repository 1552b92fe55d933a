"""PooDLe (Wang, Hoang et al.): a dense flow-equivariance loss through the spatial decoder
module plus a pooled BYOL loss on K flow-informed subcrop pairs (Eq. 1-3, App. A), as the
authors' code computes it (agentic-learning-ai-lab/poodle src/models/poodle.py,
src/datasets/bdd100k.py, configs/exp/poodle.yaml); where the paper's text reads otherwise,
a config key selects the text.

- Global views: the frame resized to 1080x1920 x U(0.75, 1.25) and cropped to 512x1024 at
  the same place in both frames (``crop_geometry="paper"``: a crop of area U(0.16, 0.45),
  Sec. 4.1); SimCLR's colour changes on each frame; an affine per view (scale 0.9-1.1,
  rotation +-10 deg) and a flip with p = 0.5, undone through the view flow.
- Dense (Eq. 1): encoder -> SDM (output stride 8; the authors' order up(g(z)) + lateral by
  default, ``decoder_order="paper"`` for Eq. 3's text) -> 1x1-conv projector / predictor,
  upsampled to the view grid, compared through the view flow where it is in view and
  forward-backward consistent in pre-affine pixels (alpha1 = 0.1, alpha2 = 0.5), for both
  directions in one 2N batch (one BatchNorm batch, the loss their mean).
- Pooled (Eq. 2): per direction K = 6 subcrop pairs cut from the coloured pre-affine images
  (no affine, no flip, no further colour change): a cell of a grid of side
  round(sqrt(mean area) min(h, w)) (3x5 cells at 512x1024) without replacement, an online
  box of area s ~ U(0.05, 0.3) around a point of the cell, the point carried by the flow
  and jittered by up to 10 % of the image; 5 tries to land inside the other image, else
  the target crop comes from the same image at the same point; the target box has area
  U(s, 0.3); both resized to 192x192. Pooled projector / predictor: MLPs on pooled res5.
- Loss: 0.5 L_dense + 0.5 L_pool (App. A "Loss details").
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from core.decoders import SpatialDecoder

from ..augment import COLOURS, ColourSpec, ViewSpec, crop_matrix, render_view
from ..correspondence import (area_box, paired_views, pixel_scale, resized_frame_box,
                              view_correspondence)
from ..flow.geometry import sample_at
from ..losses import dense_equivariance_loss, pooled_loss
from ..models import mlp
from .base import OnlineTargetMethod, register_method
from .flowe import upsampled

CROP_GEOMETRIES = ("authors", "paper")
MAX_TRIES_PER_CROP = 5  # src/models/poodle.py


def crop_size(image_hw: tuple[int, int], scale: tuple[float, float],
              ratio: tuple[float, float], rng: np.random.Generator) -> tuple[int, int]:
    """(h, w) of torchvision's RandomResizedCrop.get_params: area U(scale) of the image,
    log-uniform aspect ratio, 10 tries, then the largest box of a clamped ratio."""
    H, W = image_hw
    for _ in range(10):
        area = H * W * rng.uniform(*scale)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(area * r))), int(round(math.sqrt(area / r)))
        if 0 < w <= W and 0 < h <= H:
            return h, w
    if W / H < ratio[0]:
        return int(round(W / ratio[0])), W
    if W / H > ratio[1]:
        return H, int(round(H * ratio[1]))
    return H, W


def subcrop_cells(image_hw: tuple[int, int], area: tuple[float, float], k: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """PooDLe's search grid: cells of side res = round(sqrt(mean area) min(h, w)),
    (h // res + 1) x (w // res + 1) of them (partial edge cells included), k drawn without
    replacement (with, when k exceeds them). Returns ([k, 2] (row, col), res)."""
    h, w = image_hw
    res = max(1, round(math.sqrt(sum(area) / 2) * min(h, w)))
    rows, cols = h // res + 1, w // res + 1
    cells = rng.choice(rows * cols, size=k, replace=k > rows * cols)
    return np.stack(np.divmod(cells, cols), axis=1), res


def carry_points(q: torch.Tensor, A_src: torch.Tensor, A_dst: torch.Tensor,
                 flow: torch.Tensor) -> torch.Tensor:
    """Points q [k, 2] (x, y) of an image of frame a -> the image of frame b, through frame
    a, the frame flow a -> b [2, H, W] and frame b (A_src / A_dst [3, 3]: image pixel ->
    frame pixel): the flow-informed centre of PooDLe Sec. 3."""
    p = q @ A_src[:2, :2].T + A_src[:2, 2]
    m = sample_at(flow[None], p.T.reshape(1, 2, 1, -1), padding_mode="border")
    return (p + m[0, :, 0].T - A_dst[:2, 2]) @ torch.linalg.inv(A_dst[:2, :2]).T


def subcrop_boxes(image_hw: tuple[int, int], C: torch.Tensor, flow: torch.Tensor, *,
                  k: int, area: tuple[float, float], ratio: tuple[float, float],
                  jitter: float, rng: np.random.Generator) -> list[tuple]:
    """K subcrop pairs of one direction, as the authors' code draws them: a list of
    (online box, target box, paired) with boxes (x0, y0, w, h) in pixels of the [h, w]
    pre-affine images (C: their pixel -> frame pixel, the same for both frames; flow: frame
    flow from the online frame to the other [2, H, W]); paired False: the target crop
    comes from the online image (no flow-carried point landed inside after 5 tries)."""
    H, W = image_hw
    cells, res = subcrop_cells(image_hw, area, k, rng)
    out = []
    for row, col in cells:
        s = rng.uniform(*area)
        bh, bw = crop_size(image_hw, (s, s), ratio, rng)

        def point():
            i = rng.integers(min(row * res, H - 1), min((row + 1) * res, H))
            j = rng.integers(min(col * res, W - 1), min((col + 1) * res, W))
            return max(int(i), bh // 2), max(int(j), bw // 2)

        for _ in range(MAX_TRIES_PER_CROP):
            i, j = point()
            moved = carry_points(torch.tensor([[j, i]], dtype=torch.float32), C, C, flow)[0]
            shake = np.array([H, W]) * (2 * rng.uniform(size=2) - 1) * jitter
            ti, tj = np.round(np.array([moved[1], moved[0]]) + shake).astype(int)
            if 0 <= ti < H and 0 <= tj < W:
                paired = True
                break
        else:
            (i, j), paired = point(), False
            ti, tj = i, j
        th, tw = crop_size(image_hw, (s, area[1]), ratio, rng)
        y0, x0 = max(ti - th // 2, 0), max(tj - tw // 2, 0)
        y1, x1 = min(ti - th // 2 + th, H), min(tj - tw // 2 + tw, W)
        out.append(((j - bw // 2, i - bh // 2, bw, bh), (x0, y0, x1 - x0, y1 - y0), paired))
    return out


@dataclass(frozen=True)
class PooDLeViews:
    """PooDLe's view maker (plain data, so DataLoader workers run it): paired views, the view
    flow in both directions with where it holds, and both directions' subcrop pairs."""
    spec: ViewSpec
    box: Callable
    colours: dict[str, ColourSpec]
    alpha: tuple[float, float]
    k: int
    subcrop_area: tuple[float, float]
    subcrop_ratio: tuple[float, float]
    subcrop_size: tuple[int, int]
    jitter: float

    def _subcrops(self, views: dict, flows: dict, rngs) -> dict:
        """Both directions' K subcrop pairs: {"sub_online", "sub_target": [N, 2K, 3, s, s]}."""
        out = {"sub_online": [], "sub_target": []}
        size = self.subcrop_size
        for n, rng in enumerate(rngs):
            online, target = [], []
            for a, b in (("1", "2"), ("2", "1")):
                pairs = subcrop_boxes(self.spec.size, views["C"][n], flows[a + b][n], k=self.k,
                                      area=self.subcrop_area, ratio=self.subcrop_ratio,
                                      jitter=self.jitter, rng=rng)
                for box_a, box_b, paired in pairs:
                    online.append(render_view(views["pre" + a][n],
                                              crop_matrix(box_a, size).float(), size))
                    target.append(render_view(views["pre" + (b if paired else a)][n],
                                              crop_matrix(box_b, size).float(), size))
            out["sub_online"].append(torch.stack(online))
            out["sub_target"].append(torch.stack(target))
        return {k: torch.stack(v) for k, v in out.items()}

    def __call__(self, frames, rngs, *, flow_fwd, flow_bwd) -> dict:
        """frames [N, 2, 3, H, W], flows [N, 1, 2, H, W] (pairs)."""
        views = paired_views(frames[:, 0], frames[:, 1], rngs, self.spec, self.box,
                             self.colours)
        flow_fwd, flow_bwd = flow_fwd[:, 0], flow_bwd[:, 0]
        size, scale = self.spec.size, pixel_scale(views["C"])
        views["flow12"], views["valid12"] = view_correspondence(
            flow_fwd, flow_bwd, views["A1"], views["A2"], size, self.alpha, scale=scale)
        views["flow21"], views["valid21"] = view_correspondence(
            flow_bwd, flow_fwd, views["A2"], views["A1"], size, self.alpha, scale=scale)
        views.update(self._subcrops(views, {"12": flow_fwd, "21": flow_bwd}, rngs))
        del views["pre1"], views["pre2"]
        return views


@register_method("poodle")
class PooDLe(OnlineTargetMethod):
    dense = True
    needs_flow = True
    # the dense branch (projection over the decoder, and its prediction) and the pooled
    # branch's prediction of the subcrops: either can collapse alone
    health_outputs = {"projection": "projector", "prediction": "predictor",
                      "pool_projection": "pool_projector", "pool_prediction": "pool_predictor"}
    collapse_outputs = ("projection", "pool_projection")

    def __init__(self, *, view_size=(512, 1024), initial_size=(1080, 1920),
                 initial_scale=(0.75, 1.25), crop_geometry: str = "authors",
                 crop_area=(0.16, 0.45), affine_scale=(0.9, 1.1), rotation: float = 10.0,
                 flip: bool = True, alpha=(0.1, 0.5), colour: str = "simclr",
                 subcrops: int = 6, subcrop_area=(0.05, 0.3), subcrop_ratio=(3 / 4, 4 / 3),
                 subcrop_size=(192, 192), jitter: float = 0.1, dense_weight: float = 0.5,
                 pooled_weight: float = 0.5, decoder_reduction: int = 8,
                 decoder_order: str = "authors", hidden: int = 4096, out_dim: int = 256, **kw):
        super().__init__(hidden=hidden, out_dim=out_dim, **kw)
        spec = ViewSpec(size=tuple(view_size), scale=tuple(affine_scale), rotation=rotation,
                        flip=bool(flip))
        if crop_geometry == "authors":
            box = functools.partial(resized_frame_box, size=spec.size,
                                    initial_size=tuple(initial_size),
                                    initial_scale=tuple(initial_scale))
        else:
            box = functools.partial(area_box, size=spec.size, area=tuple(crop_area))
        self.view_maker = PooDLeViews(spec, box, COLOURS[colour], tuple(alpha), int(subcrops),
                                      tuple(subcrop_area), tuple(subcrop_ratio),
                                      tuple(subcrop_size), jitter)
        self.weights = (dense_weight, pooled_weight)
        self.decoder = SpatialDecoder.for_trunk(self.encoder.output_shape(),
                                                reduction=decoder_reduction,
                                                order=decoder_order)
        channels = self.encoder.channels["res5"]
        self.pool_projector = mlp(channels, hidden, out_dim)
        self.pool_predictor = mlp(out_dim, hidden, out_dim)
        self.add_target("decoder")
        self.add_target("pool_projector")

    def _pooled(self, x, online: bool):
        """The pooled branch: online (projection, prediction), or the target projection."""
        if online:
            z = self.pool_projector(self.encoder(x)["res5"].mean((2, 3)))
            return z, self.pool_predictor(z)
        return self.target_pool_projector(self.target_encoder(x)["res5"].mean((2, 3))).detach()

    def losses(self, views: dict) -> dict[str, torch.Tensor]:
        # both directions in one 2N batch (the authors' x = cat(source, target) and
        # teacher_x = cat(target, source)): one BatchNorm batch, the loss their mean
        online_x = torch.cat([views["view1"], views["view2"]])
        target_x = torch.cat([views["view2"], views["view1"]])
        flow = torch.cat([views["flow12"], views["flow21"]])
        valid = torch.cat([views["valid12"], views["valid21"]])
        self.observe(mask_kept=valid.float().mean())
        features = self.encoder(online_x)
        z = self.projector(self.decoder(features))
        prediction = self.predictor(z)
        self.observe(outputs={"projection": z, "prediction": prediction},
                     embeddings=features["res5"])
        p = upsampled(prediction, online_x.shape[-2:])
        with torch.no_grad():
            zt = self.target_projector(self.target_decoder(self.target_encoder(target_x)))
        dense = dense_equivariance_loss(p, upsampled(zt, target_x.shape[-2:]), flow, valid)
        s_online, s_target = views["sub_online"], views["sub_target"]
        n, k = s_online.shape[:2]
        z_pool, q = self._pooled(s_online.flatten(0, 1), True)
        self.observe(outputs={"pool_projection": z_pool, "pool_prediction": q})
        q = q.unflatten(0, (n, k))
        with torch.no_grad():
            zp = self._pooled(s_target.flatten(0, 1), False).unflatten(0, (n, k))
        return {"loss_dense": self.weights[0] * dense,
                "loss_pool": self.weights[1] * pooled_loss(q, zp)}

    def decoder_entry(self) -> dict:
        return self.decoder.checkpoint_entry()
