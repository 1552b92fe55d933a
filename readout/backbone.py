"""Frozen ResNet backbones built from `flowssl-backbone/1` checkpoints (core.checkpoint).

The backbone reports its outputs (``output_shape()``: name -> channels, stride), in the
manner of detectron2's ``Backbone``; heads are built from that. State-dict keys are
torchvision's ResNet names without ``fc.*``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from core.checkpoint import FORMAT, make_checkpoint
from core.io import save_torch
from core.trunk import ARCHS, STAGES, ResNetBackbone, ShapeSpec  # noqa: F401  (re-exported)

CLASSIFIER_KEYS = ("fc.weight", "fc.bias")


class CheckpointError(ValueError):
    """A checkpoint that does not match the contract or the architecture."""


def load_state_dict_exact(module: nn.Module, state: dict, what: str,
                          allowed_extra: tuple[str, ...] = ()) -> list[str]:
    """Load `state` into `module`, failing with the list of missing / unexpected keys.

    Keys in `allowed_extra` (e.g. torchvision's classifier) are dropped and returned.
    """
    own = module.state_dict()
    dropped = [k for k in state if k in allowed_extra]
    state = {k: v for k, v in state.items() if k not in allowed_extra}
    problem = state_mismatch(own, state)
    if problem:
        raise CheckpointError(f"{what} does not match: {problem}")
    module.load_state_dict(state, strict=True)
    return dropped


def state_mismatch(own: dict, state: dict) -> str:
    """'' when `state` has exactly the keys and shapes of `own`, else what differs (one
    line: counts and the first few keys)."""
    if not all(torch.is_tensor(v) for v in state.values()):
        bad = [k for k, v in state.items() if not torch.is_tensor(v)]
        return f"{len(bad)} values are not tensors ({', '.join(bad[:3])})"
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    parts = [f"{len(keys)} {label} keys ({', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''})"
             for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    parts += [f"{k} is {tuple(state[k].shape)}, expected {tuple(own[k].shape)}"
              for k in bad_shape[:3]]
    if len(bad_shape) > 3:
        parts.append(f"{len(bad_shape) - 3} more shape mismatches")
    return "; ".join(parts)


def load_torch_file(path: str | Path):
    """``torch.load`` with tensors only (no code from a file is ever run); a file that is
    cut short, not a PyTorch file, or holds objects is a CheckpointError of one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a bad file
        text = str(e)
        if "Weights only load failed" in text or "weights_only" in text:
            why = ("it holds Python objects besides tensors, which are never loaded "
                   "(save a plain state dict)")
        else:
            why = f"{type(e).__name__}: {text.strip().splitlines()[0][:160] if text else ''}"
            why = f"not a complete PyTorch file; cut short or another format? ({why})"
        raise CheckpointError(f"{path}: cannot be read: {why}") from None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint(path: str | Path) -> dict:
    """Read a `flowssl-backbone/1` file, or wrap a plain torchvision ResNet state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    obj = load_torch_file(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        for key in ("arch", "state_dict"):
            if key not in obj:
                raise CheckpointError(f"{path}: {FORMAT} checkpoint without {key!r}")
        if obj["arch"] not in ARCHS or not isinstance(obj["state_dict"], dict):
            raise CheckpointError(f"{path}: arch {obj['arch']!r} is not one of "
                                  f"{', '.join(ARCHS)}, or state_dict is not a dict")
        check_backbone_state(obj["arch"], obj["state_dict"], path)
        obj.setdefault("decoder", None)
        obj.setdefault("meta", {})
        return obj
    if isinstance(obj, dict) and "conv1.weight" in obj and "layer4.0.conv1.weight" in obj:
        arch = guess_arch(obj, path)
        check_backbone_state(arch, obj, path)
        return {"format": FORMAT, "arch": arch, "state_dict": obj,
                "decoder": None, "meta": {"method": "torchvision", "imported_from": str(path)}}
    raise CheckpointError(f"{path} is neither a {FORMAT} checkpoint nor a torchvision ResNet "
                          f"state dict (top-level keys: {list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__})")


def check_backbone_state(arch: str, state: dict, path) -> None:
    """The keys and shapes of a `arch` backbone (built on the meta device: no memory, no
    time), so a wrong file fails when read, not in the middle of a readout."""
    with torch.device("meta"):
        own = ResNetBackbone(arch=arch).state_dict()
    problem = state_mismatch(own, {k: v for k, v in state.items() if k not in CLASSIFIER_KEYS})
    if problem:
        raise CheckpointError(f"{path}: not a {arch} backbone: {problem}")


def guess_arch(state: dict, path="state dict") -> str:
    blocks = {k.split(".")[1] for k in state if k.startswith("layer3.")}
    bottleneck = "layer1.0.conv3.weight" in state
    depth = {(False, 2): "resnet18", (False, 6): "resnet34", (True, 6): "resnet50",
             (True, 23): "resnet101"}.get((bottleneck, len(blocks)))
    if depth is None:
        raise CheckpointError(f"{path}: cannot tell the ResNet depth from {len(blocks)} res4 "
                              f"blocks (ResNet-18/34/50/101 have 2/6/6/23)")
    return depth


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
