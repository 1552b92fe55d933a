"""The small base every method shares: online encoder + projector + predictor, a momentum
target (encoder + projector), the EMA update, and the backbone export. A method adds how
it makes views from a frame pair and its loss."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..models import Encoder, mlp
from ..optim import ema_update
from ..registry import registry

METHODS, register_method, get_method_class = registry("method")


class Method(nn.Module):
    dense = False  # 1x1-conv heads on the feature map instead of pooled MLPs
    needs_flow = False

    def __init__(self, *, arch: str = "resnet50", output_stride: int = 32, hidden: int = 4096,
                 out_dim: int = 256):
        super().__init__()
        self.encoder = Encoder(arch=arch, output_stride=output_stride)
        channels = self.encoder.channels["res5"]
        self.projector = mlp(channels, hidden, out_dim, dense=self.dense)
        self.predictor = mlp(out_dim, hidden, out_dim, dense=self.dense)
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in (*self.target_encoder.parameters(), *self.target_projector.parameters()):
            p.requires_grad_(False)

    def online_modules(self) -> list[nn.Module]:
        return [self.encoder, self.projector, self.predictor]

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        ema_update(self.target_encoder, self.encoder, tau)
        ema_update(self.target_projector, self.projector, tau)

    def make_views(self, frames1: torch.Tensor, frames2: torch.Tensor,
                   rng: np.random.Generator) -> dict:
        """frames float [N, 3, H, W] in [0, 1] -> {"view1", "view2", ...}."""
        raise NotImplementedError

    def losses(self, views: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        return self.encoder.backbone_state_dict()
