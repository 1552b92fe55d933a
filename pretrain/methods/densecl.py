"""DenseCL (Wang et al. 2021, "Dense Contrastive Learning for Self-Supervised Visual
Pre-Training"), as the authors' code WXinlong/DenseCL trains it (openselfsup/models/
densecl.py, necks.py DenseCLNeck, configs/selfsup/densecl/densecl_coco_800ep.py): MoCo v2
with a dense branch.

- Neck: MoCo v2's global MLP (pooled res5 -> 2048 -> ReLU -> 128) and a dense head of 1x1
  convolutions (res5 -> 2048 -> ReLU -> 128 per cell), no BatchNorm, no shared weights; both
  have momentum copies in the key encoder (m = 0.999).
- Dense loss (Eq. 2-3): each query cell's positive is the key cell with the most similar
  backbone feature (``dense_infonce_loss``); its negatives a second queue of 65,536 keys,
  one per image: the L2-normalised mean of the key's dense grid (densecl.py L178, L217).
- Loss: (1 - lambda) global InfoNCE + lambda dense, lambda = 0.5 (densecl.py L213-214),
  temperature 0.2; one direction (view 1 queries, view 2 keys) with shuffle BN, as MoCo.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..health import queue_gap
from ..losses import dense_pairs, infonce_loss
from ..optim import ema_update
from .base import StepContext, momentum_copy, register_method
from .moco import MoCoV2


@register_method("densecl")
class DenseCL(MoCoV2):
    local_batchnorm = ("key_encoder", "key_head", "key_dense_head")
    # both branches: the global head's queries and the dense head's cells (pixels as rows,
    # each cell a query of the dense loss), each with its positive-vs-queue gap
    health_outputs = {"projection": "head", "dense_projection": "dense_head"}

    def __init__(self, *, loss_lambda: float = 0.5, **kw):
        super().__init__(**kw)
        channels, hidden = self.encoder.channels["res5"], self.head[0].out_features
        out_dim = self.head[-1].out_features
        self.dense_head = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(hidden, out_dim, 1))
        self.key_dense_head = momentum_copy(self.dense_head)
        # the authors' neck init (densecl.py L55 init_weights(init_linear='kaiming') ->
        # necks.py _init_weights): the global MLP's linear layers kaiming normal, fan_in,
        # ReLU, bias 0; the dense convs keep PyTorch's default; key copies start equal
        for m in self.head.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.key_head.load_state_dict(self.head.state_dict())
        self.register_buffer("queue2", F.normalize(torch.randn(out_dim, self.queue.shape[1]),
                                                   dim=0))
        self.loss_lambda = loss_lambda

    def _key_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        res5 = self.key_encoder(x)["res5"]
        grid = self.key_dense_head(res5).flatten(2).float()  # [n, D, S]
        return {"keys": F.normalize(self.key_head(res5.mean(dim=(2, 3))).float(), dim=1),
                "dense": F.normalize(grid, dim=1),
                "dense_mean": F.normalize(grid.mean(dim=2), dim=1),
                "feat": F.normalize(res5.flatten(2).float(), dim=1)}

    def losses(self, views: dict) -> dict[str, torch.Tensor]:
        everyone, keys = self._own_keys(views["view2"])
        self._new_keys = {"queue": everyone["keys"], "queue2": everyone["dense_mean"]}
        res5 = self.encoder(views["view1"])["res5"]
        dense = self.dense_head(res5)
        q_dense = F.normalize(dense.flatten(2).float(), dim=1)
        q_feat = F.normalize(res5.flatten(2).float(), dim=1)
        lam = self.loss_lambda
        loss_global = (1 - lam) * self._global_loss(res5, keys["keys"])
        # dense_infonce_loss (Eq. 2-3), its pairs kept for the health signals
        queries, positives = dense_pairs(q_dense, keys["dense"], q_feat, keys["feat"])
        self.observe(outputs={"dense_projection": dense},
                     queue_gap_dense=queue_gap(queries, positives, self.queue2))
        return {"loss_global": loss_global,
                "loss_dense": lam * infonce_loss(queries, positives, self.queue2,
                                                 self.temperature)}

    @torch.no_grad()
    def after_step(self, ctx: StepContext) -> dict[str, float]:
        ema_update(self.key_dense_head, self.dense_head, self.momentum)
        return super().after_step(ctx)
