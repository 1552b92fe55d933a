"""PiCO (Sharma et al., "Pixel-level Correspondence for Self-Supervised Learning from Video")
and its two baselines. No code was released: every choice the paper leaves open is stated
here and in pretrain/configs/pico.yaml, and selectable.

- Samples (Sec. 3.2-3.3): an anchor frame and the frames anchor sampling picks on the
  video's stored trajectories (``pretrain.data.samples.TrackedFrames``), with the tracked
  point pairs between them.
- Objective (Sec. 3.4): VADeR's pixel InfoNCE (Pinheiro et al. 2020, Eq. 1) in MoCo-v2's
  design: a momentum key branch (m = 0.999) and a queue of negative point keys. The encoder
  is a ResNet-50 initialised from MoCo-v2 (``init``) and frozen; a semantic-FPN decoder
  (``core.decoders.SemanticFPN``, Kirillov et al. 2019) gives a 128-d map at stride 4; the
  projector is MoCo-v2's head with 1x1 convs (2048 hidden, 128 out). Points are mapped to
  feature cells by scaling their coordinates by 1/4 (App. A.1).
- Not in the paper: temperature, queue size (MoCo-v2's 0.2 and 65,536), the number of
  frames per anchor (``partners``: 1), the view augmentation (MoCo-v2's, on each frame), and
  how a scaled point picks its cell (the cell containing it).
- Baselines (Sec. 4): ``static_video`` picks frames and points as PiCO does but assumes zero
  flow (a point pairs with the same frame position in the other frame); ``static_frame``
  makes both views of one frame, so correspondence comes from crops and flips only (VADeR).
  On one seed the three share the videos, frames, crops and initialisation (a paired
  comparison: "we can isolate the value point tracking is yielding", Sec. 4); what differs
  is exactly the second frame's point (PiCO vs Static (Video)) and the second frame and
  the points (Static (Video) vs Static (Frames)).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.decoders import SemanticFPN
from core.runtime import rank_world
from core.reading import CLASSIFIER_KEYS, load_state_dict_exact, read_checkpoint

from ..augment import COLOURS, ColourSpec, ViewSpec, photometric, render_view, view_matrix
from ..distributed import gather_from_ranks
from ..health import queue_gap, queue_health
from ..losses import infonce_loss
from ..optim import ema_update
from .base import Method, StepContext, momentum_copy, register_method

CORRESPONDENCES = ("tracks", "static")


def to_view(matrix: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Frame pixels xy [P, 2] -> the pixels of the view with ``view(q) = frame(A q)``."""
    inverse = torch.linalg.inv(matrix.double())
    return ((xy.double() @ inverse[:2, :2].T) + inverse[:2, 2]).float()


def to_frame(matrix: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    return ((xy.double() @ matrix.double()[:2, :2].T) + matrix.double()[:2, 2]).float()


@dataclass(frozen=True)
class PointViews:
    """PiCO's view maker: for each sample and each partner frame j, a MoCo-v2 view of the
    anchor frame (frames[:, 0]) and one of frame j + 1 (of the anchor again when K = 1), and
    up to `points` point pairs inside both views -> {"view1", "view2": [M, 3, h, w],
    "pairs": [M, points, 4] view pixels (x1, y1, x2, y2), NaN-padded}, M = N x max(K-1, 1).
    ``correspondence="tracks"``: the item's tracked pairs (``points`` [N, K-1, P, 4], frame
    pixels); ``"static"``: zero flow, each point paired with the same frame position in the
    other frame; the points are PiCO's own (the tracked pairs' anchor-frame ends) when the
    item has them (Static (Video): only the correspondence differs from PiCO, Sec. 4), else
    drawn uniformly in view 1 (Static (Frames), one frame, VADeR)."""
    spec: ViewSpec
    colours: dict[str, ColourSpec]
    correspondence: str = "tracks"
    points: int = 256

    def __call__(self, frames: torch.Tensor, rngs: list[np.random.Generator],
                 points: torch.Tensor | None = None) -> dict:
        N, K = frames.shape[:2]
        out = {"view1": [], "view2": [], "pairs": []}
        for n, rng in enumerate(rngs):
            for j in range(max(K - 1, 1)):
                pair = []
                for key, frame in (("1", frames[n, 0]), ("2", frames[n, min(j + 1, K - 1)])):
                    A = view_matrix(frame.shape[-2:], self.spec, rng)
                    view = photometric(render_view(frame, A, self.spec.size), rng,
                                       self.colours[key])
                    out["view" + key].append(view)
                    pair.append(A)
                out["pairs"].append(self._pairs(rng, *pair, None if points is None
                                                else points[n, j]))
        return {k: torch.stack(v) for k, v in out.items()}

    def _pairs(self, rng, A1, A2, tracked: torch.Tensor | None) -> torch.Tensor:
        h, w = self.spec.size
        if self.correspondence == "tracks":
            if tracked is None:
                raise ValueError("tracks correspondence needs the samples' points (samples: "
                                 "tracks)")
            tracked = tracked[torch.isfinite(tracked[:, 0])]
            q1, q2 = to_view(A1, tracked[:, :2]), to_view(A2, tracked[:, 2:])
        elif tracked is not None:  # static_video: PiCO's points, zero flow assumed
            tracked = tracked[torch.isfinite(tracked[:, 0])]
            q1, q2 = to_view(A1, tracked[:, :2]), to_view(A2, tracked[:, :2])
        else:  # static_frame: one frame, VADeR's uniform points
            q1 = torch.from_numpy(rng.uniform((0, 0), (w - 1, h - 1), (self.points, 2))).float()
            q2 = to_view(A2, to_frame(A1, q1))
        inside = torch.ones(len(q1), dtype=torch.bool)
        for q in (q1, q2):
            inside &= (q[:, 0] >= 0) & (q[:, 0] <= w - 1) & (q[:, 1] >= 0) & (q[:, 1] <= h - 1)
        both = torch.cat([q1, q2], dim=1)[inside]
        both = both[torch.from_numpy(rng.permutation(len(both))[:self.points])]
        out = torch.full((self.points, 4), float("nan"))
        out[:len(both)] = both
        return out


def point_features(z: torch.Tensor, xy: torch.Tensor, stride: int) -> torch.Tensor:
    """PiCO App. A.1: the feature cell of each point, its view pixel coordinates scaled by
    1 / stride. z [M, C, h, w]; xy [M, P, 2] (x, y; NaN rows read cell 0) -> [M, P, C]."""
    M, C, h, w = z.shape
    cell = torch.nan_to_num(xy, nan=0.0).div(stride).floor().long()
    x, y = cell[..., 0].clamp(0, w - 1), cell[..., 1].clamp(0, h - 1)
    index = (y * w + x)[:, None, :].expand(-1, C, -1)  # [M, C, P]
    return torch.gather(z.flatten(2), 2, index).transpose(1, 2)


def pixel_infonce_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor,
                       temperature: float, reduction: str = "mean") -> torch.Tensor:
    """VADeR's pixel InfoNCE (Pinheiro et al. 2020, Eq. 1; PiCO Sec. 3.4): for each point
    pair, -log exp(q.k+ / t) / (exp(q.k+ / t) + sum_n exp(q.k_n / t)) with the negatives
    k_n from the queue: MoCo's InfoNCE with point features as samples.
    q, k: [n, C] L2-normalised point features of the query and key views; queue: [C, K].
    Mean over the pairs, or per pair [n] (``reduction="none"``)."""
    return infonce_loss(q, k, queue, temperature, reduction=reduction)


def projection_head(channels: int, hidden: int, out_dim: int) -> nn.Sequential:
    """MoCo-v2's head (linear -> ReLU -> linear) with 1x1 convs (PiCO Sec. 3.4)."""
    return nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, out_dim, 1))


@register_method("pico")
class PiCO(Method):
    samples = "tracks"
    correspondence = "tracks"
    # MoCo-v2's per-GPU BatchNorm; it matters only for an encoder that trains (no init): the
    # frozen encoder keeps its statistics and the decoder normalises with GroupNorm
    sync_batchnorm = False
    # the point queries of the loss (what trains: decoder and projector; the encoder is
    # frozen, so RankMe reads the decoder's map, pixels as rows), with the queue gap
    health_outputs = {"projection": "projector"}

    def __init__(self, *, init: str | None = None, freeze_encoder: bool = True,
                 view_size=(224, 224), crop_area=(0.2, 1.0), fpn_channels: int = 256,
                 conv_dims: int = 128, hidden: int = 2048, out_dim: int = 128,
                 queue_size: int = 65536, momentum: float = 0.999, temperature: float = 0.2,
                 points_per_pair: int = 256, feature_stride: int = 4, **kw):
        super().__init__(**kw)
        if self.encoder.output_stride != 32:
            raise ValueError(f"output_stride {self.encoder.output_stride}: PiCO's FPN reads an "
                             f"undilated trunk (32)")
        if init:
            ck = read_checkpoint(init)
            if ck["arch"] != self.encoder.arch:
                raise ValueError(f"init {init} is a {ck['arch']}, the model a "
                                 f"{self.encoder.arch}: set model.arch={ck['arch']}")
            load_state_dict_exact(self.encoder.body, ck["state_dict"], f"init {init}",
                                  allowed_extra=CLASSIFIER_KEYS)
        self.init = init
        self.frozen = bool(freeze_encoder) and bool(init)  # a random encoder is trained
        if self.frozen:
            self.encoder.body.freeze()
        self.decoder = SemanticFPN.for_trunk(self.encoder.output_shape(),
                                             fpn_channels=fpn_channels, conv_dims=conv_dims)
        self.projector = projection_head(conv_dims, hidden, out_dim)
        self.key_decoder = momentum_copy(self.decoder)
        self.key_projector = momentum_copy(self.projector)
        if not self.frozen:  # a frozen encoder is its own key encoder
            self.key_encoder = momentum_copy(self.encoder)
        self.momentum, self.temperature, self.stride = momentum, temperature, feature_stride
        self.register_buffer("queue", F.normalize(torch.randn(out_dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # real keys
        self.view_maker = PointViews(ViewSpec(size=tuple(view_size), area=tuple(crop_area)),
                                     COLOURS["moco_v2"], self.correspondence,
                                     int(points_per_pair))
        self._new_keys: torch.Tensor | None = None

    @classmethod
    def check_config(cls, model: dict, schedule: dict, where: str) -> None:
        init = model.get("init")
        if init is not None and not isinstance(init, str):
            raise ValueError(f"{where}.init: a checkpoint file (or null), got {init!r}")
        if init is not None and not Path(init).is_file():
            raise ValueError(f"{where}.init: no file {init}; give a MoCo-v2 checkpoint (bench "
                             f"checkpoint import --from moco_v2, or a moco_v2 run's "
                             f"backbone.pth), or init=null to train the encoder")

    def _key_map(self, x: torch.Tensor) -> torch.Tensor:
        encoder = self.encoder if self.frozen else self.key_encoder
        return self.key_projector(self.key_decoder(encoder(x)))

    def losses(self, views: dict) -> dict[str, torch.Tensor]:
        pairs = views["pairs"]  # [M, P, 4]
        valid = torch.isfinite(pairs[..., 0])
        with torch.set_grad_enabled(not self.frozen and torch.is_grad_enabled()):
            features = self.encoder(views["view1"])
        decoded = self.decoder(features)
        z = self.projector(decoded)
        with torch.no_grad():
            zk = self._key_map(views["view2"])
        q = F.normalize(point_features(z, pairs[..., :2], self.stride).float(), dim=-1)
        k = F.normalize(point_features(zk, pairs[..., 2:], self.stride).float(), dim=-1)
        everyone = gather_from_ranks(torch.cat([k.flatten(0, 1), valid.flatten()[:, None]],
                                               dim=1))
        self._new_keys = everyone[everyone[:, -1] > 0, :-1]
        self.observe(outputs={"projection": q[valid]}, embeddings=decoded,
                     points_kept=valid.float().mean(),
                     queue_gap=queue_gap(q[valid], k[valid], self.queue),
                     **queue_health(self.queue_filled, self.queue.shape[1]))
        # the mean over every process's pairs: DDP averages the processes' gradients, so
        # each divides its sum by the global count / world (counts differ between them)
        per_world = everyone[:, -1].sum() / rank_world()[1]
        if not valid.any():  # no pair inside both views here: nothing to contrast
            return {"loss_infonce": z.sum() * 0}
        loss = pixel_infonce_loss(q[valid], k[valid], self.queue, self.temperature,
                                  reduction="none")
        return {"loss_infonce": loss.sum() / per_world}

    @torch.no_grad()
    def after_step(self, ctx: StepContext) -> dict[str, float]:
        """Momentum update of the key branch, then enqueue this step's point keys (every
        process's, the newest `queue_size` if there are more)."""
        ema_update(self.key_decoder, self.decoder, self.momentum)
        ema_update(self.key_projector, self.projector, self.momentum)
        if not self.frozen:
            ema_update(self.key_encoder, self.encoder, self.momentum)
        new, self._new_keys = self._new_keys, None
        if new is not None and len(new):
            size = self.queue.shape[1]
            new = new[-size:]
            slots = (self.queue_ptr + torch.arange(len(new), device=self.queue.device)) % size
            self.queue[:, slots] = new.T.to(self.queue.dtype)
            self.queue_ptr.fill_((int(self.queue_ptr) + len(new)) % size)
            self.queue_filled.fill_(min(size, int(self.queue_filled) + len(new)))
        return {}

    def deviations(self) -> list[str]:
        if not self.init:
            return ["no MoCo-v2 initialisation (model.init): the encoder is trained from "
                    "random init, where PiCO Sec. 3.4 freezes a MoCo-v2 encoder"]
        return [] if self.frozen else ["the encoder is trained (model.freeze_encoder=false); "
                                       "PiCO Sec. 3.4 freezes it"]

    def decoder_entry(self) -> dict:
        return self.decoder.checkpoint_entry()


@register_method("static_video")
class StaticVideo(PiCO):
    """PiCO Sec. 4 "Static (Video)": PiCO's frames, zero flow assumed."""
    correspondence = "static"


@register_method("static_frame")
class StaticFrame(PiCO):
    """PiCO Sec. 4 "Static (Frames)": one frame per video, both views from it (VADeR)."""
    samples = "clips"
    correspondence = "static"
