"""MoCo v2 (He et al. 2020, "Momentum Contrast"; Chen et al. 2020, "Improved Baselines with
Momentum Contrastive Learning"), as the authors' code facebookresearch/moco
(moco/builder.py, main_moco.py with --mlp --aug-plus --cos) trains it:

- a query encoder with an MLP head (res5 pooled -> 2048 -> ReLU -> 128; builder.py ``mlp``),
  and a key encoder + head that are momentum copies (m = 0.999, builder.py
  ``_momentum_update_key_encoder``: parameters only);
- the InfoNCE loss (MoCo Eq. 1) of each query against its key and a queue of 65,536 keys of
  earlier batches, temperature 0.2 (MoCo v2 Sec. 2), one direction (view 1 queries);
- shuffle BN (MoCo Sec. 3.3, builder.py ``_batch_shuffle_ddp``): the key encoder sees the
  global batch in a random order, cut into groups of ``shuffle_bn_group`` samples, each
  normalised with its own BatchNorm statistics (the authors' groups are one GPU's 32
  samples: batch 256 over 8 GPUs); the same groups whatever the number of processes;
- the queue takes the keys of every process (builder.py ``concat_all_gather``) after the
  optimizer step, oldest keys first out.

Views: both from one frame (video frames used as images, like ``byol``), MoCo v2's
augmentation (main_moco.py --aug-plus): RandomResizedCrop area 0.2-1, colour jitter
(0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale p = 0.2, Gaussian blur sigma 0.1-2 with p = 0.5,
horizontal flip; no solarize.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from core.runtime import rank_world

from ..augment import COLOURS, CropViews, ViewSpec
from ..distributed import gather_from_ranks
from ..health import queue_gap, queue_health
from ..losses import infonce_loss
from ..optim import ema_update
from .base import Method, StepContext, momentum_copy, register_method



@register_method("moco_v2")
class MoCoV2(Method):
    local_batchnorm = ("key_encoder", "key_head")  # shuffle BN defines their batches
    # a contrastive method collapses when every query lands on one point: the head's output
    # (the loss's queries), read with the positive-vs-queue gap, which is 0 at chance
    health_outputs = {"projection": "head"}

    def __init__(self, *, view_size=(224, 224), crop_area=(0.2, 1.0), hidden: int = 2048,
                 out_dim: int = 128, queue_size: int = 65536, momentum: float = 0.999,
                 temperature: float = 0.2, shuffle_bn_group: int = 32, **kw):
        super().__init__(**kw)
        self.view_maker = CropViews(ViewSpec(size=tuple(view_size), area=tuple(crop_area)),
                                    COLOURS["moco_v2"])
        self.momentum, self.temperature = momentum, temperature
        self.group = int(shuffle_bn_group)
        self.head = nn.Sequential(nn.Linear(self.encoder.channels["res5"], hidden),
                                  nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))
        self.key_encoder = momentum_copy(self.encoder)
        self.key_head = momentum_copy(self.head)
        self.register_buffer("queue", F.normalize(torch.randn(out_dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # real keys
        self._ctx: StepContext | None = None
        self._new_keys: dict[str, torch.Tensor] | None = None  # queue name -> keys

    @classmethod
    def check_config(cls, model: dict, schedule: dict, where: str) -> None:
        defaults = {k: p.default
                    for k, p in inspect.signature(MoCoV2.__init__).parameters.items()}
        batch = schedule.get("batch_size")
        group = model.get("shuffle_bn_group", defaults["shuffle_bn_group"])
        queue = model.get("queue_size", defaults["queue_size"])
        if batch is None:
            return
        if batch % group:
            raise ValueError(f"{where}.shuffle_bn_group: {group} does not divide the batch "
                             f"size {batch}; pick a divisor")
        if queue < batch:
            raise ValueError(f"{where}.queue_size: {queue} is smaller than the batch size "
                             f"{batch}; the queue must hold a whole batch")

    def before_step(self, ctx: StepContext) -> None:
        self._ctx = ctx

    def _embed(self, encoder, head, x):
        h = encoder(x)["res5"].mean(dim=(2, 3))
        return h, head(h)

    def _key_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the key encoder gives for a group of views: the L2-normalised keys."""
        return {"keys": F.normalize(self._embed(self.key_encoder, self.key_head, x)[1].float(),
                                    dim=1)}

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Shuffle BN: ``_key_outputs`` [world * n, ...] of every process's views, in global
        sample order."""
        rank, world = rank_world()
        n = len(x)
        if n % self.group:
            raise ValueError(f"model.shuffle_bn_group: {self.group} does not divide the "
                             f"{n} samples of each of the {world} processes")
        everyone = gather_from_ranks(x)
        order = torch.randperm(len(everyone), generator=self._ctx.generator()).to(x.device)
        mine = everyone[order[rank * n:(rank + 1) * n]]
        parts = [self._key_outputs(chunk) for chunk in mine.split(self.group)]
        out = {}
        for name in parts[0]:
            shuffled = gather_from_ranks(torch.cat([p[name] for p in parts]))
            out[name] = torch.empty_like(shuffled)
            out[name][order] = shuffled
        return out

    def _own_keys(self, x: torch.Tensor) -> tuple[dict, dict]:
        """The key outputs of every process (for the queues) and of this process's views."""
        if self._ctx is None:
            raise RuntimeError(f"{self.name}: before_step() was not called (the loop's "
                               f"contract)")
        everyone = self._keys(x)
        rank, n = rank_world()[0], len(x)
        return everyone, {k: v[rank * n:(rank + 1) * n] for k, v in everyone.items()}

    def _global_loss(self, res5: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """MoCo Eq. 1 for the queries of the res5 maps [n, C, h, w] against their keys."""
        h = res5.mean(dim=(2, 3))
        z = self.head(h)
        q = F.normalize(z.float(), dim=1)
        self.observe(outputs={"projection": z}, embeddings=h,
                     queue_gap=queue_gap(q, keys, self.queue),
                     **queue_health(self.queue_filled, self.queue.shape[1]))
        return infonce_loss(q, keys, self.queue, self.temperature)

    def losses(self, views: dict) -> dict[str, torch.Tensor]:
        everyone, keys = self._own_keys(views["view2"])
        self._new_keys = {"queue": everyone["keys"]}
        return {"loss_infonce": self._global_loss(self.encoder(views["view1"])["res5"],
                                                  keys["keys"])}

    @torch.no_grad()
    def after_step(self, ctx: StepContext) -> dict[str, float]:
        """Momentum update of the key encoder and head (the authors make it at the start of
        the next forward pass: the same values), then enqueue this step's keys."""
        ema_update(self.key_encoder, self.encoder, self.momentum)
        ema_update(self.key_head, self.head, self.momentum)
        new, self._new_keys = self._new_keys, None
        if new is not None:
            size = self.queue.shape[1]
            n = len(next(iter(new.values())))
            slots = (self.queue_ptr + torch.arange(n, device=self.queue.device)) % size
            for name, keys in new.items():  # every queue gets one key per sample
                getattr(self, name)[:, slots] = keys.T.to(self.queue.dtype)
            self.queue_ptr.fill_((int(self.queue_ptr) + n) % size)
            self.queue_filled.fill_(min(size, int(self.queue_filled) + n))
        return {}
