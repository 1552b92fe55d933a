"""Reading `flowssl-backbone/1` files (core.checkpoint) and loading state dicts exactly: what
the readouts and a pretraining method that starts from a checkpoint (PiCO's MoCo-v2
initialisation) both need. A bad file is a one-line CheckpointError naming it. A trunk
trained on another input convention than this suite's (core.inputs) is converted to it
when read, with one line saying so."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from .checkpoint import FORMAT
from .inputs import IMAGENET, UNNORMALISED, InputConvention, convert_state
from .trunk import ARCHS, ResNetBackbone

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


def declared_input(checkpoint: dict, path) -> InputConvention:
    """The input convention a checkpoint's trunk was trained on: its ``meta.input``; for a
    file without one, what wrote it fed: ``bench pretrain`` exports (their config holds the
    pretraining schedule) were trained on unnormalised frames in [0, 1] before checkpoints
    declared it, everything else (torchvision, imports, Scratch, Supervised) on ImageNet's."""
    meta = checkpoint.get("meta") or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: meta is a {type(meta).__name__}, not a dict")
    if "input" in meta:
        try:
            return InputConvention.from_meta(meta["input"], str(path))
        except ValueError as e:
            raise CheckpointError(f"{e}; fix or remove meta.input") from None
    config = meta.get("config")
    schedule = config.get("schedule") if isinstance(config, dict) else None
    if isinstance(schedule, dict) and "steps" in schedule:
        return UNNORMALISED
    return IMAGENET


def to_suite_input(checkpoint: dict, path, log=print) -> dict:
    """`checkpoint` with a trunk that takes this suite's inputs (core.inputs.IMAGENET):
    unchanged when it declares them, else converted (``convert_state``), noted in
    ``meta.input_converted_from`` and in one logged line."""
    declared = declared_input(checkpoint, path)
    meta = checkpoint.setdefault("meta", {})
    if declared.same_as(IMAGENET):
        meta["input"] = IMAGENET.meta()
        return checkpoint
    checkpoint["state_dict"] = convert_state(checkpoint["state_dict"], declared)
    meta["input_converted_from"] = declared.meta()
    meta["input"] = IMAGENET.meta()
    if log is not None:
        log(f"{path}: its trunk was trained on {declared.describe()}; converted to "
            f"{IMAGENET.describe()} (folded into conv1 and bn1: exact but for conv1's "
            f"3-pixel border)")
    return checkpoint


def read_checkpoint(path: str | Path, log=print) -> dict:
    """Read a `flowssl-backbone/1` file, or wrap a plain torchvision ResNet state dict; the
    trunk takes this suite's input convention (``to_suite_input``; `log` gets the line of
    a conversion)."""
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
        if obj["decoder"] is not None:
            from .decoders import DECODERS
            kind = obj["decoder"].get("kind") if isinstance(obj["decoder"], dict) else None
            if kind not in DECODERS or not isinstance(obj["decoder"].get("state_dict"), dict):
                raise CheckpointError(f"{path}: decoder kind {kind!r} is not one of "
                                      f"{', '.join(DECODERS)} (or it has no state_dict)")
        obj.setdefault("meta", {})
        return to_suite_input(obj, path, log)
    if isinstance(obj, dict) and "conv1.weight" in obj and "layer4.0.conv1.weight" in obj:
        arch = guess_arch(obj, path)
        check_backbone_state(arch, obj, path)
        return {"format": FORMAT, "arch": arch, "state_dict": obj,
                "decoder": None, "meta": {"method": "torchvision", "imported_from": str(path),
                                          "input": IMAGENET.meta()}}
    keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{path} is neither a {FORMAT} checkpoint nor a torchvision ResNet "
                          f"state dict (top-level keys: {keys})")


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
