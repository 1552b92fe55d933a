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
- import the files the authors of PooDLe, FlowE, PixPro (and PixPro with optical flow),
  DenseCL, BYOL and MoCo v2 released (layouts: benchmarks.checkpoint_layouts), the online
  or the target/EMA weights, PooDLe's spatial decoder with its backbone. Their Python
  objects besides tensors (configs, argparse namespaces, haiku containers) are read as
  inert stubs (benchmarks.safe_unpickle): nothing from a file is run.
"""
from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections import Counter, namedtuple
from pathlib import Path

import numpy as np
import torch

from core.checkpoint import FORMAT, make_checkpoint
from core.decoders import SpatialDecoder
from core.io import atomic_path
from readout.backbone import (CheckpointError, ResNetBackbone, guess_arch,
                              load_state_dict_exact, load_torch_file, read_checkpoint,
                              save_checkpoint)

from . import safe_unpickle
from .checkpoint_layouts import (BYOL_DROP, BYOL_REFERENCE, DENSECL_RAW, DENSECL_RELEASED,
                                 FLOWE, HAIKU_SKIPPED, IMPORT_SOURCES, MOCO_V2, PIXPRO, POODLE,
                                 WEIGHTS, Layout, dropped_summary, haiku_entries, haiku_name,
                                 is_decoder_key, is_resnet_key, split_keys)

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
    method = checkpoint.get("meta", {}).get("method", "?")
    obj = {"model": model, "__author__": f"flowssl-bench ({method})",
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

    ALLOWED = safe_unpickle.NUMPY_GLOBALS

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


def _with_counters(module: torch.nn.Module, state: dict) -> dict:
    """`state` with the module's own BatchNorm counters where it has none."""
    return {**{k: v for k, v in module.state_dict().items() if k.endswith(SKIPPED)}, **state}


def _wrap(state: dict[str, torch.Tensor], source: str, path, log, *,
          decoder: dict | None = None, **meta) -> dict:
    """The ``flowssl-backbone/1`` checkpoint of an imported backbone (checked against its
    arch) and decoder entry; `meta` adds e.g. ``imported_weights``."""
    arch = guess_arch(state, path)
    backbone = ResNetBackbone(arch=arch)
    full = _with_counters(backbone, state)
    load_state_dict_exact(backbone, full, f"{source} checkpoint {path}")
    log(f"imported {len(state)} tensors as {arch} from {source} file {path}"
        + (f", with a {decoder['kind']} decoder (order: {decoder['order']})" if decoder else ""))
    return make_checkpoint(arch=arch, state_dict=full, method=f"imported:{source}",
                           decoder=decoder, imported_from=str(path), with_git_sha=False,
                           **meta)


def import_detectron2(path, *, log=print) -> dict:
    return _wrap(_detectron2_state(path, log), "detectron2", path, log)


def _detectron2_state(path, log) -> dict[str, torch.Tensor]:
    """The torchvision-named tensors of a detectron2 ``.pkl``."""
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
    return {dst: torch.from_numpy(np.ascontiguousarray(model[src]))
            for src, dst in mapping.items()}


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


# --- the authors' released files (benchmarks.checkpoint_layouts) ---------------------------

def load_authors_file(path, log) -> object:
    """A torch file read through benchmarks.safe_unpickle (tensors as saved, every other
    object an inert stub, listed), or a CheckpointError of one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = safe_unpickle.torch_load(path)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a bad file
        text = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise CheckpointError(f"{path}: cannot be read as a PyTorch file "
                              f"({type(e).__name__}: {text})") from None
    _log_stubs(obj, log)
    return obj


def _log_stubs(obj, log) -> None:
    stubs = safe_unpickle.stubs_in(obj)
    if stubs:
        log(f"read {len(stubs)} kind(s) of Python object as inert stubs (nothing from the file "
            f"is run): {', '.join(stubs)}")


def _container(obj, key: str, path, source: str) -> dict:
    state = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        top = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: expected a {source} file with its weights under "
                              f"{key!r} (top-level: {top})")
    return state


def _check_weights(weights: str, source: str, path, has: bool, reference: str) -> None:
    if weights not in WEIGHTS:
        raise CheckpointError(f"weights {weights!r}: one of {', '.join(WEIGHTS)}")
    if not has:
        raise CheckpointError(f"{path}: this {source} file holds no {weights} weights "
                              f"({reference})")


def _decoder_entry(state: dict[str, torch.Tensor], what: str) -> dict:
    """The checkpoint's decoder entry of PooDLe's spatial-decoder weights (core.decoders
    names), computed in the authors' order."""
    decoder = SpatialDecoder.from_state_dict(state, order="authors")
    load_state_dict_exact(decoder, _with_counters(decoder, state), what)
    return decoder.checkpoint_entry()


def split_state(state: dict, layout: Layout, *, weights: str, path,
                log) -> tuple[dict, dict]:
    """(backbone, decoder) tensors of the `weights` groups of `layout` under torchvision /
    SpatialDecoder names: each mapped key printed, the dropped groups summed up in one line;
    a key of no group, or a kept one that is no trunk/decoder name, fails naming it."""
    kept, dropped, unknown = split_keys(state, layout, weights)
    if unknown is not None:
        known = ", ".join(g.prefix + "*" for g in layout.groups)
        raise CheckpointError(f"{path}: {layout.source} key {unknown!r} is neither weights to "
                              f"import nor a group known to be dropped ({known})")
    parts = {}
    for into, valid in (("backbone", is_resnet_key), ("decoder", is_decoder_key)):
        names = {k: name for k, (i, name) in kept.items() if i == into}
        if names:
            log(f"{layout.source} {weights} {into}:")
        mapping = _map(names, lambda k: names[k] if valid(names[k]) else None,
                       f"{layout.source} import of {path}", log)
        parts[into] = {dst: state[src] for src, dst in mapping.items()}
    log(dropped_summary(dropped))
    if not parts["backbone"]:
        prefix = [g.prefix for g in layout.groups if g.weights == weights][0]
        raise CheckpointError(f"{path}: no {prefix}* keys under {layout.container!r}; is this "
                              f"a {layout.source} file?")
    return parts["backbone"], parts["decoder"]


def import_layout(path, layout: Layout, *, weights: str = "online", log=print, obj=None,
                  **meta) -> dict:
    """The checkpoint of a prefix-based authors' file (`obj`: the file, if already read)."""
    _check_weights(weights, layout.source, path, layout.has(weights), layout.reference)
    obj = load_authors_file(path, log) if obj is None else obj
    state = _container(obj, layout.container, path, layout.source)
    backbone, decoder = split_state(state, layout, weights=weights, path=path, log=log)
    entry = _decoder_entry(decoder, f"{layout.source} decoder in {path}") if decoder else None
    return _wrap(backbone, layout.source, path, log, decoder=entry, imported_weights=weights,
                 **meta)


def import_poodle(path, *, weights: str = "online", log=print) -> dict:
    """PooDLe's released "full checkpoint" (agentic-learning-ai-lab/poodle
    src/utils/misc.py save_model: ``{'model', 'optimizer', 'epoch', 'args', 'scaler'}``;
    model of src/models/poodle.py): ``backbone.*`` (student; ``teacher_backbone.*`` the
    teacher) and the spatial decoder ``decoder_blocks.{0,1}.*`` (torchvision
    ``Bottleneck(2048, 512, base_width=32)``) / ``decoder_laterals.{0,1}.*`` (1x1 convs),
    imported as the checkpoint's decoder in the authors' order; heads and RAFT dropped."""
    return import_layout(path, POODLE, weights=weights, log=log)


def import_flowe(path, *, weights: str = "online", log=print) -> dict:
    """PooDLe's FlowE re-implementation (agentic-learning-ai-lab/poodle
    src/models/flowe.py, saved as PooDLe's): ``encoder.*`` (``target_encoder.*``), a timm
    ResNet-50 with torchvision's names and ``output_stride=8``: res4/res5 dilated instead
    of strided, the same shapes. Recorded as ``meta.authors_output_stride``; readouts keep
    their suites' own dilation."""
    log("note: FlowE's encoder is timm's ResNet-50 with output_stride=8 (res4 and res5 "
        "dilated, same weight shapes); recorded as meta authors_output_stride=8, readouts "
        "keep their suites' own dilation")
    return import_layout(path, FLOWE, weights=weights, log=log, authors_output_stride=8)


def import_pixpro(path, *, weights: str = "online", log=print) -> dict:
    """PixPro (zdaxie/PixPro main_pretrain.py save_checkpoint, published by
    publish_model.py as ``{'model': ...}``; raw files add ``'opt'``, an argparse.Namespace)
    and PixPro with optical flow (rioyokotalab/PixPro-with-OpticalFlow, the same layout):
    ``module.encoder.*`` (``module.encoder_k.*`` the momentum encoder). A detectron2
    ``.pkl`` of transfer/detection/convert_pretrain_to_d2.py (online encoder) is read too."""
    if _is_detectron2_pickle(path):
        _check_weights(weights, "pixpro", path, weights == "online",
                       "a detectron2 .pkl of convert_pretrain_to_d2.py holds the online "
                       "encoder only")
        log("a detectron2 .pkl (PixPro's transfer/detection/convert_pretrain_to_d2.py):")
        return _wrap(_detectron2_state(path, log), "pixpro", path, log,
                     imported_weights=weights)
    return import_layout(path, PIXPRO, weights=weights, log=log)


def _is_detectron2_pickle(path) -> bool:
    """A plain pickle holding {'model', 'matching_heuristics'} rather than a torch file."""
    if not Path(path).is_file() or zipfile.is_zipfile(path):
        return False
    try:
        obj = read_plain_pickle(path)  # a legacy torch file starts with its magic number
    except CheckpointError:
        return False
    return isinstance(obj, dict) and "matching_heuristics" in obj


def import_densecl(path, *, weights: str = "online", log=print) -> dict:
    """DenseCL: the released files (WXinlong/DenseCL tools/extract_backbone_weights.py:
    ``{'state_dict': torchvision keys, 'author': 'DenseCL'}``, online backbone only) or a
    raw mmcv training checkpoint (openselfsup/models/densecl.py: ``backbone.*`` = online,
    ``encoder_k.0.*`` = momentum encoder, necks and queues dropped)."""
    obj = load_authors_file(path, log)
    state = _container(obj, "state_dict", path, "densecl")
    raw = any(k.startswith("backbone.") for k in state)
    log(f"DenseCL {'raw mmcv training' if raw else 'released (extracted backbone)'} file")
    return import_layout(path, DENSECL_RAW if raw else DENSECL_RELEASED, weights=weights,
                         log=log, obj=obj)


def import_moco_v2(path, *, weights: str = "online", log=print) -> dict:
    """MoCo v2 (facebookresearch/moco main_moco.py save_checkpoint, moco/builder.py):
    ``state_dict`` with ``module.encoder_q.*`` (``module.encoder_k.*``), whose ``fc`` is
    the MLP head (dropped), and the queue."""
    return import_layout(path, MOCO_V2, weights=weights, log=log)


BYOL_FIELDS = ("online_params", "target_params", "online_state", "target_state", "opt_state")
# stand-ins that behave, for the names BYOL's pickle needs to be rebuilt (all else: stubs)
BYOL_REPLACEMENTS = {
    ("byol.byol_experiment", "_ByolExperimentState"): namedtuple("_ByolExperimentState",
                                                                 BYOL_FIELDS),
    ("haiku._src.data_structures", "FlatMapping"): dict,  # reduces to (FlatMapping, (dict,))
    ("haiku._src.data_structures", "FlatMap"): dict,
}


def import_byol(path, *, weights: str = "online", log=print) -> dict:
    """BYOL's released JAX/Haiku checkpoint (pretrain_res50x1.pkl; google-deepmind/
    deepmind-research byol/utils/checkpointing.py: a dill pickle of {'experiment_state',
    'step', 'rng'}): ``experiment_state.{online,target}_params`` and ``_state`` renamed to
    torchvision (benchmarks.checkpoint_layouts.haiku_name), conv kernels HWIO -> OIHW,
    BatchNorm running statistics from the state's ``mean_ema``/``var_ema`` averages."""
    _check_weights(weights, "byol", path, True, BYOL_REFERENCE)
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = safe_unpickle.pickle_load(path, BYOL_REPLACEMENTS)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path}: not a readable pickle ({e})") from None
    _log_stubs(obj, log)
    experiment = obj.get("experiment_state") if isinstance(obj, dict) else None
    params, state = (experiment.get(f"{weights}_{part}") if isinstance(experiment, dict)
                     else getattr(experiment, f"{weights}_{part}", None)
                     for part in ("params", "state"))
    if not isinstance(params, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected BYOL's {{'experiment_state': ...}} with "
                              f"{weights}_params and {weights}_state ({BYOL_REFERENCE})")
    log("note: BYOL's haiku ResNet pads 'SAME' (more at the bottom/right at stride 2), "
        "torchvision symmetrically: features are close to the authors', not identical")
    return _wrap(byol_state(haiku_entries(params, state), path=path, log=log), "byol", path,
                 log, imported_weights=weights, authors_padding="SAME")


def byol_state(entries: dict, *, path, log) -> dict[str, torch.Tensor]:
    """torchvision tensors of haiku {(module, field): array}: prints each mapping, sums up
    the dropped heads, fails on the first entry it neither maps nor knows to drop."""
    state, dropped = {}, Counter()
    for (module, field), value in entries.items():
        source = f"{module}:{field}"
        if module.startswith(BYOL_DROP):
            dropped[module.split("/")[0]] += 1
            continue
        name = haiku_name(module, field)
        if name is None and field in HAIKU_SKIPPED and haiku_name(module, "scale"):
            log(f"  {source:<64} (skipped: EMA counter / un-debiased value)")
            continue
        if name is None or not isinstance(value, np.ndarray):
            why = "cannot be mapped" if name is None else f"is a {type(value).__name__}"
            raise CheckpointError(f"{path}: BYOL entry {source!r} {why} (not a haiku "
                                  f"ResNet trunk, projector, predictor or classifier entry)")
        array = value.transpose(3, 2, 0, 1) if field == "w" else value.reshape(-1)
        state[name] = torch.from_numpy(np.ascontiguousarray(array))
        log(f"  {source:<64} -> {name}" + (" (HWIO -> OIHW)" if field == "w" else ""))
    log(dropped_summary(dropped))
    return state


EXPORTERS = {"detectron2": export_detectron2, "mmseg": export_mmseg}
_IMPORT_FUNCTIONS = {"torchvision": import_torchvision, "detectron2": import_detectron2,
                     "mmseg": import_mmseg, "poodle": import_poodle, "flowe": import_flowe,
                     "pixpro": import_pixpro, "densecl": import_densecl, "byol": import_byol,
                     "moco_v2": import_moco_v2}
# `bench checkpoint import --from`, in the order and with the names of checkpoint_layouts
# (torch-free, so the parser reads them without torch); BASIC_SOURCES take no `weights`
IMPORTERS = {name: _IMPORT_FUNCTIONS[name] for name in IMPORT_SOURCES}
