"""Checkpoint converters between the ``flowssl-backbone/1`` contract (torchvision ResNet key
names) and other formats. Every converter prints each mapped key and fails on any key it
cannot map.

- export ``detectron2``: a ``.pkl`` of ``{"model": {name: numpy array}, "__author__",
  "matching_heuristics": True}`` with detectron2 ResNet names (``stem.conv1``,
  ``res2.0.conv1.norm``, ``shortcut``), as MoCo's convert-pretrain-to-detectron2 writes.
  torchvision weights put the stride in the 3x3 conv and expect RGB in [0, 1] normalised
  with ImageNet mean/std: set ``MODEL.RESNETS.STRIDE_IN_1X1 False``, ``INPUT.FORMAT RGB``
  and the matching ``PIXEL_MEAN/STD`` in detectron2.
- export ``mmseg`` (also mmdet): ``{"state_dict": {"backbone." + name: tensor}, "meta"}``;
  mmcv's ResNet uses torchvision's names.
- import ``torchvision`` (a ResNet state dict), ``detectron2`` (such a ``.pkl``, read by a
  restricted unpickler that accepts only plain containers and numpy arrays) and ``mmseg``.
"""
from __future__ import annotations

import io
import pickle
import re

import numpy as np
import torch

from core.checkpoint import FORMAT, make_checkpoint
from core.io import atomic_path
from readout.backbone import (CheckpointError, ResNetBackbone, guess_arch,
                              load_state_dict_exact, load_torch_file, read_checkpoint,
                              save_checkpoint)

SKIPPED = ("num_batches_tracked",)  # BN counters: no counterpart in detectron2, not weights


# torchvision name <-> detectron2 name; {L} = torchvision layer, {R} = detectron2 stage L + 1
RENAMES = (
    ("conv1.weight", "stem.conv1.weight"),
    ("bn1.{p}", "stem.conv1.norm.{p}"),
    ("layer{L}.{b}.conv{k}.weight", "res{R}.{b}.conv{k}.weight"),
    ("layer{L}.{b}.bn{k}.{p}", "res{R}.{b}.conv{k}.norm.{p}"),
    ("layer{L}.{b}.downsample.0.weight", "res{R}.{b}.shortcut.weight"),
    ("layer{L}.{b}.downsample.1.{p}", "res{R}.{b}.shortcut.norm.{p}"),
)
_FIELDS = {"L": r"(?P<L>[1-4])", "R": r"(?P<R>[2-5])", "b": r"(?P<b>\d+)", "k": r"(?P<k>\d)",
           "p": r"(?P<p>weight|bias|running_mean|running_var)"}


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{", "{").replace(r"\}", "}")
                      .format(**_FIELDS))


def _rename(key: str, to_detectron2: bool) -> str | None:
    for tv, d2 in RENAMES:
        src, dst = (tv, d2) if to_detectron2 else (d2, tv)
        m = _pattern(src).fullmatch(key)
        if m:
            f = m.groupdict()
            if "L" in f:
                f["R"] = int(f["L"]) + 1
            if "R" in f and "L" not in f:
                f["L"] = int(f["R"]) - 1
            return dst.format(**f)
    return None


def _map(keys, name_fn, what: str, log) -> dict[str, str]:
    """{source key: target key}; prints each mapping, fails listing unmapped keys."""
    mapping, unmapped = {}, []
    for key in keys:
        if key.endswith(SKIPPED):
            log(f"  {key:<48} (skipped: BatchNorm counter)")
            continue
        target = name_fn(key)
        if target is None:
            unmapped.append(key)
        else:
            mapping[key] = target
            log(f"  {key:<48} -> {target}")
    if unmapped:
        raise CheckpointError(f"{what}: {len(unmapped)} key(s) cannot be mapped: "
                              f"{', '.join(unmapped[:20])}")
    return mapping


def _backbone_state(checkpoint: dict, log) -> dict[str, torch.Tensor]:
    state = dict(checkpoint["state_dict"])
    for k in ("fc.weight", "fc.bias"):
        if state.pop(k, None) is not None:
            log(f"  {k:<48} (dropped: ImageNet classifier)")
    return state


def export_detectron2(checkpoint: dict, out, *, log=print) -> dict:
    state = _backbone_state(checkpoint, log)
    mapping = _map(state, lambda k: _rename(k, True), "detectron2 export", log)
    model = {dst: state[src].detach().cpu().numpy() for src, dst in mapping.items()}
    obj = {"model": model, "__author__": f"flowssl-bench ({checkpoint.get('meta', {}).get('method', '?')})",
           "matching_heuristics": True}
    with atomic_path(out) as tmp:
        tmp.write_bytes(pickle.dumps(obj, protocol=2))
    return obj


def export_mmseg(checkpoint: dict, out, *, log=print) -> dict:
    state = _backbone_state(checkpoint, log)
    mapping = _map(state, lambda k: f"backbone.{k}", "mmseg export", log)
    obj = {"state_dict": {dst: state[src].detach().cpu().clone() for src, dst in mapping.items()},
           "meta": {"source_format": FORMAT, "arch": checkpoint["arch"],
                    **{k: str(v) for k, v in checkpoint.get("meta", {}).items()
                       if k in ("method", "pretrain_data", "epochs", "git_sha")}}}
    save_checkpoint(obj, out)
    return obj


class _PlainUnpickler(pickle.Unpickler):
    """Plain containers, numbers, strings and numpy arrays only: any other global (a class
    or function a pickle could call) is refused before it is called."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise CheckpointError(f"refusing to unpickle {module}.{name}: only plain data "
                              f"(dicts, lists, numbers, strings, numpy arrays) is accepted")


def read_plain_pickle(path) -> object:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _PlainUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable pickle ({e})") from None


def _wrap(state: dict[str, torch.Tensor], source: str, path, log) -> dict:
    arch = guess_arch(state, path)
    backbone = ResNetBackbone(arch=arch)
    full = {**{k: v for k, v in backbone.state_dict().items() if k.endswith(SKIPPED)}, **state}
    load_state_dict_exact(backbone, full, f"{source} checkpoint {path}")
    log(f"imported {len(state)} tensors as {arch} from {source} file {path}")
    return make_checkpoint(arch=arch, state_dict=full, method=f"imported:{source}",
                           imported_from=str(path), with_git_sha=False)


def import_detectron2(path, *, log=print) -> dict:
    obj = read_plain_pickle(path)
    model = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(model, dict):
        raise CheckpointError(f"{path}: expected a dict with 'model' (detectron2 .pkl)")
    mapping = _map(model, lambda k: _rename(k, False), f"detectron2 import of {path}",
                   log)
    odd = [src for src in mapping if not (isinstance(model[src], np.ndarray)
                                          and model[src].dtype.kind in "fiu")]
    if odd:
        first = model[odd[0]]
        kind = f"array of {first.dtype}" if isinstance(first, np.ndarray) else type(first).__name__
        raise CheckpointError(f"{path}: {len(odd)} weights are not numeric arrays (first: "
                              f"{odd[0]}, a {kind}); is this a detectron2 model .pkl?")
    state = {dst: torch.from_numpy(np.ascontiguousarray(model[src])) for src, dst in mapping.items()}
    return _wrap(state, "detectron2", path, log)


def import_torchvision(path, *, log=print) -> dict:
    ck = read_checkpoint(path)
    if ck["meta"].get("method") != "torchvision":
        raise CheckpointError(f"{path} is already a {FORMAT} checkpoint, not a torchvision one")
    state = _backbone_state(ck, log)
    _map(state, lambda k: k, f"torchvision import of {path}", log)
    return _wrap(state, "torchvision", path, log)


def import_mmseg(path, *, log=print) -> dict:
    obj = load_torch_file(path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict with backbone.* keys")
    backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
    others = sorted(set(state) - set(backbone))
    if others:
        log(f"  ignoring {len(others)} non-backbone keys (heads): {', '.join(others[:5])}")
    mapping = _map(backbone, lambda k: k[len("backbone."):], f"mmseg import of {path}", log)
    return _wrap({dst: backbone[src] for src, dst in mapping.items()}, "mmseg", path, log)


EXPORTERS = {"detectron2": export_detectron2, "mmseg": export_mmseg}
IMPORTERS = {"torchvision": import_torchvision, "detectron2": import_detectron2,
             "mmseg": import_mmseg}
