"""The method contract, the one thing the pretraining loop (``pretrain.train``) knows about
a method. A method is one file: a subclass of ``Method`` registered by name, plus its config.

What a method declares (class attributes):
- ``samples``: what each batch item is (``pretrain.data.samples``): ``"pairs"``, two frames
  of one video, ``"clips"``, K frames of a video resampled at a fixed rate (PixPro-flow), or
  ``"tracks"``, an anchor frame and the frames chosen for it on a trajectory store with the
  point pairs between them (PiCO). The config's data section follows it.
- ``needs_flow``: the view maker gets the forward and backward flow between consecutive
  frames.
- ``find_unused_parameters``: parameters that may get no gradient in a step (DDP is told).
- ``local_batchnorm``: sub-modules whose BatchNorm is never synchronised (``--sync-bn``),
  e.g. a key encoder whose batch is defined by shuffle BN (MoCo Sec. 3.3).
- ``sync_batchnorm``: whether the authors synchronise BatchNorm across processes (the
  default of ``--sync-bn``).

What a method implements:
- ``self.view_maker``, set by the constructor: plain data (no weights, picklable) called as
  ``(frames [N, K, 3, H, W], rngs, **flows) -> views`` with ``flow_fwd`` / ``flow_bwd``
  [N, K-1, 2, H, W] (frame k -> k+1, k+1 -> k) when ``needs_flow``, and ``points``
  [N, K-1, P, 4] with ``"tracks"`` samples (NaN-padded); everything random about
  sample n comes from ``rngs[n]``; DataLoader workers run it (``make_views`` is the loop's
  call of it);
- ``losses(views) -> {name: scalar}``: loss terms, and only loss terms; the loop sums them.

What a method may hook (defaults do nothing):
- ``before_step(ctx)`` before the forward pass and ``after_step(ctx) -> {name: float}`` after
  the optimizer step (momentum encoders, queues, their schedules; the returned values are
  logged, e.g. the EMA rate). ``ctx`` is a ``StepContext``: the step, the schedule length and
  a generator every process draws the same numbers from.
- ``check_config(model, schedule, where)``: refuse model values that do not fit the
  schedule before any work starts.
- ``observe(...)`` inside ``losses``: diagnostics (head outputs, embeddings, mask fractions,
  queue gaps), logged as the run's health and never added to the loss. ``health_outputs``
  declares which head outputs the collapse signals read: name -> the module whose output it
  is, and why that tensor (``pretrain.health``).

What a method owns: every tensor it keeps between steps is a parameter or a buffer of the
module (a queue, a pointer), so the run state saves it and a resumed run is bit-identical.
Trainable parameters are those with ``requires_grad``; momentum copies have it off. A
predictor or an EMA target exists only where the method makes one (``OnlineTargetMethod``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..models import Encoder, mlp
from ..optim import ema_momentum, ema_update
from ..registry import registry

METHODS, register_method, get_method_class = registry("method")


@dataclass(frozen=True)
class StepContext:
    step: int  # 0-based
    total: int  # steps in the schedule
    seed: int  # the run's seed

    def generator(self, *key: int) -> torch.Generator:
        """A generator that gives the same numbers on every process for this step and key."""
        seed = np.random.SeedSequence([self.seed, self.step, 3, *key]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(seed))


class Method(nn.Module):
    samples = "pairs"
    needs_flow = False
    find_unused_parameters = False
    local_batchnorm: tuple[str, ...] = ()
    sync_batchnorm = False
    health_outputs: dict[str, str] = {}  # signal name -> module producing it (observe)
    # the outputs whose collapse the warning reads (default: all of them); the others are
    # logged only, e.g. a predictor's output, which concentrates on the mean of its targets
    # in a healthy run (pretrain.health)
    collapse_outputs: tuple[str, ...] | None = None

    def __init__(self, *, arch: str = "resnet50", output_stride: int = 32):
        super().__init__()
        self.encoder = Encoder(arch=arch, output_stride=output_stride)
        self._observed: dict = {}

    @classmethod
    def check_config(cls, model: dict, schedule: dict, where: str) -> None:
        """Raise ValueError naming ``where.key`` for model values the schedule cannot run."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.trainable_named_parameters()]

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def make_views(self, frames: torch.Tensor, rngs: list[np.random.Generator],
                   **flows) -> dict:
        """frames float [N, K, 3, H, W] in [0, 1], one generator per sample -> {"view1",
        ...}. Everything random about sample n comes from rngs[n], so its views do not
        depend on which process or batch it lands in. Runs ``self.view_maker``: plain data
        (no weights) set by the constructor, which the loop hands to its DataLoader
        workers."""
        return self.view_maker(frames, rngs, **flows)

    def losses(self, views: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def before_step(self, ctx: StepContext) -> None:
        pass

    def after_step(self, ctx: StepContext) -> dict[str, float]:
        return {}

    def forward(self, views: dict) -> dict[str, torch.Tensor]:
        self._observed = {}
        return self.losses(views)  # DistributedDataParallel calls forward

    def observe(self, *, outputs: dict[str, torch.Tensor] | None = None,
                embeddings: torch.Tensor | None = None, **scalars: torch.Tensor) -> None:
        """Health inputs of this step (detached; never part of the loss): the head outputs
        the collapse signals read, by the names of ``health_outputs`` ([N, D] or dense
        [N, D, H, W]), the embeddings RankMe reads, and scalars such as ``mask_kept``, the
        fraction of pixels the occlusion / in-view mask keeps."""
        if outputs:
            unknown = sorted(set(outputs) - set(self.health_outputs))
            if unknown:
                raise ValueError(f"{self.name}: observed outputs {unknown} are not in "
                                 f"health_outputs {sorted(self.health_outputs)}")
            held = self._observed.setdefault("outputs", {})
            held.update({k: v.detach() for k, v in outputs.items()})
        for name, value in (("embeddings", embeddings), *scalars.items()):
            if value is not None:
                self._observed[name] = value.detach()

    def watched_outputs(self) -> tuple[str, ...]:
        return tuple(self.health_outputs if self.collapse_outputs is None
                     else self.collapse_outputs)

    def pop_observed(self) -> dict[str, torch.Tensor]:
        observed, self._observed = self._observed, {}
        return observed

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        return self.encoder.backbone_state_dict()

    def deviations(self) -> list[str]:
        """How this run departs from the paper in ways its config values do not show (PiCO
        without its MoCo-v2 initialisation): logged at the start, kept in the checkpoint's
        meta."""
        return []

    def decoder_entry(self) -> dict | None:
        """The decoder exported beside the backbone (PooDLe's SDM: kind, order, weights);
        None for most methods."""
        return None


def momentum_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` that gets no gradients (a momentum / EMA encoder)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


class OnlineTargetMethod(Method):
    """BYOL's structure (Grill et al. 2020, Sec. 3.1), shared by FlowE, PooDLe and PixPro: an
    online encoder, projector and predictor (unless ``has_predictor`` is off), and a target
    made of EMA copies of the encoder, the
    projector and whatever a method adds with ``add_target``, moved after every optimizer
    step with tau from ``ema_base`` to 1 on a cosine (Sec. 3.2)."""
    dense = False  # 1x1-conv heads on the feature map instead of pooled MLPs
    has_predictor = True  # BYOL's predictor q; PixPro has none (its PPM takes the place)
    # BYOL's collapse is a constant online projection (SimSiam Sec. 4.1 reads the
    # projection): pooled vectors, or a dense map's pixels as rows and its per-image means.
    # The prediction is logged only: it predicts the mean of its targets early on, and in
    # the study's FlowE and PooDLe runs its per-image means reach a mean pairwise cosine of
    # 0.98-0.99 while the projection stays at 0.3 and RankMe at 360 of 512 (issue 28)
    health_outputs = {"projection": "projector", "prediction": "predictor"}
    collapse_outputs = ("projection",)
    # BYOL: cross-replica BatchNorm (deepmind-research byol/configs/byol.py bn_config
    # cross_replica_axis); PooDLe and its FlowE: convert_sync_batchnorm (src/train.py)
    sync_batchnorm = True

    def __init__(self, *, hidden: int = 4096, out_dim: int = 256, ema_base: float = 0.996,
                 **kw):
        super().__init__(**kw)
        channels = self.encoder.channels["res5"]
        self.projector = mlp(channels, hidden, out_dim, dense=self.dense)
        if self.has_predictor:
            self.predictor = mlp(out_dim, hidden, out_dim, dense=self.dense)
        self.ema_base = ema_base
        self.target_names: list[str] = []
        self.add_target("encoder")
        self.add_target("projector")

    def add_target(self, name: str) -> None:
        """Give online module `name` a momentum copy ``target_<name>``."""
        setattr(self, "target_" + name, momentum_copy(getattr(self, name)))
        self.target_names.append(name)

    @torch.no_grad()
    def after_step(self, ctx: StepContext) -> dict[str, float]:
        tau = ema_momentum(ctx.step, ctx.total, base=self.ema_base)
        for name in self.target_names:
            ema_update(getattr(self, "target_" + name), getattr(self, name), tau)
        return {"tau": tau}
