"""The small base every method shares: online encoder + projector + predictor, momentum
targets (EMA copies of the encoder, the projector and whatever a method adds with
``add_target``), the EMA update, and the backbone export. A method adds how it makes views
from a frame pair and its loss terms; what it passes to ``observe`` (projections,
embeddings, mask fractions) is the run's health, logged beside the loss and never added
to it."""
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
        self.target_names: list[str] = []
        self._observed: dict = {}
        self.add_target("encoder")
        self.add_target("projector")

    def add_target(self, name: str) -> None:
        """Give online module `name` a momentum copy ``target_<name>`` (no gradients)."""
        target = copy.deepcopy(getattr(self, name))
        for p in target.parameters():
            p.requires_grad_(False)
        setattr(self, "target_" + name, target)
        self.target_names.append(name)

    def online_modules(self) -> list[nn.Module]:
        return [m for name, m in self.named_children() if not name.startswith("target_")]

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        for name in self.target_names:
            ema_update(getattr(self, "target_" + name), getattr(self, name), tau)

    def make_views(self, frames1: torch.Tensor, frames2: torch.Tensor,
                   rngs: list[np.random.Generator], **flows) -> dict:
        """frames float [N, 3, H, W] in [0, 1], one generator per pair -> {"view1", ...}.
        Everything random about pair n comes from rngs[n], so a pair's views do not depend
        on which process or batch it lands in."""
        raise NotImplementedError

    def losses(self, views: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, views: dict) -> dict[str, torch.Tensor]:
        self._observed = {}
        return self.losses(views)  # DistributedDataParallel calls forward

    def observe(self, *, projections: torch.Tensor | None = None,
                embeddings: torch.Tensor | None = None, **scalars: torch.Tensor) -> None:
        """Health inputs of this step (detached; never part of the loss): online projections
        and backbone embeddings, [N, D] or dense [N, D, H, W], and scalars such as
        ``mask_kept``, the fraction of pixels the occlusion / in-view mask keeps."""
        for name, value in (("projections", projections), ("embeddings", embeddings),
                            *scalars.items()):
            if value is not None:
                self._observed[name] = value.detach()

    def pop_observed(self) -> dict[str, torch.Tensor]:
        observed, self._observed = self._observed, {}
        return observed

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        return self.encoder.backbone_state_dict()

    def decoder_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Weights exported beside the backbone (PooDLe's SDM); None for most methods."""
        return None
