"""Frozen ResNet backbones built from `flowssl-backbone/1` checkpoints (core.checkpoint).

The backbone reports its outputs (``output_shape()``: name -> channels, stride), in the
manner of detectron2's ``Backbone``; heads are built from that. State-dict keys are
torchvision's ResNet names without ``fc.*``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from core.checkpoint import make_checkpoint
from core.io import save_torch
from core.reading import (CLASSIFIER_KEYS, CheckpointError, check_backbone_state,  # noqa: F401
                          file_sha256, guess_arch, load_state_dict_exact, load_torch_file,
                          read_checkpoint, state_mismatch)  # (re-exported)
from core.trunk import ARCHS, STAGES, ResNetBackbone, ShapeSpec  # noqa: F401  (re-exported)


def build_backbone(checkpoint: dict, *, dilation=(False, False, False), multigrid=None,
                   frozen: bool = True, log=print) -> ResNetBackbone:
    backbone = ResNetBackbone(arch=checkpoint["arch"], dilation=dilation, multigrid=multigrid)
    dropped = load_state_dict_exact(backbone, checkpoint["state_dict"],
                                    f"{checkpoint['arch']} backbone state dict",
                                    allowed_extra=CLASSIFIER_KEYS)
    if dropped:
        log(f"dropped ImageNet classifier keys: {', '.join(dropped)}")
    return backbone.freeze() if frozen else backbone


def scratch_checkpoint(arch: str = "resnet50", seed: int = 0) -> dict:
    """A random-init backbone in the checkpoint contract (the papers' "Scratch" row)."""
    torch.manual_seed(seed)
    backbone = ResNetBackbone(arch=arch)
    return make_checkpoint(arch=arch, state_dict=backbone.state_dict(), method="scratch",
                           config={"seed": seed}, with_git_sha=False)


def save_checkpoint(checkpoint: dict, path: str | Path) -> None:
    """Atomic write (core.io): a kill or a full disk never leaves half a file."""
    save_torch(checkpoint, path)
