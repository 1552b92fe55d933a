"""How the checkpoint files that SSL methods' authors released are laid out, as data (no
torch: the `bench` parser reads the source names from here).

All but BYOL hold a torchvision ResNet-50 under a key prefix (every one of these codebases
builds torchvision's submodule names, stride in the 3x3 conv): a ``Layout`` names the
top-level key holding the state dict and its key groups, each either kept (the online or
the target/EMA weights, stripped of its prefix, into the backbone or PooDLe's decoder) or
dropped (heads, flow nets, queues). A key takes the group of its longest matching prefix,
so ``module.encoder_q.fc.`` (dropped) wins over ``module.encoder_q.`` (kept); a prefix ends
with its dot, so ``backbone.`` never matches ``teacher_backbone.``. A key of no group is an
error. BYOL (JAX/Haiku) is renamed by ``haiku_name``.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

BASIC_SOURCES = ("torchvision", "detectron2", "mmseg")
AUTHORS_SOURCES = ("poodle", "flowe", "pixpro", "densecl", "byol", "moco_v2")
IMPORT_SOURCES = BASIC_SOURCES + AUTHORS_SOURCES  # `bench checkpoint import --from`
WEIGHTS = ("online", "target")
WEIGHTS_HELP = (
    "online (default): the weights the authors' own evaluation loads (PooDLe "
    "src/utils/misc.py eval_load_model: backbone.*, FlowE likewise its student encoder.*; "
    "PixPro main_linear.py: module.encoder.*; "
    "MoCo main_lincls.py: module.encoder_q.*; DenseCL tools/extract_backbone_weights.py: "
    "backbone.*; BYOL byol/eval_experiment.py: online_params/online_state); target: the "
    "EMA / momentum copy (PooDLe teacher_*, FlowE target_encoder, PixPro and MoCo encoder_k, "
    "DenseCL raw encoder_k.0, BYOL target_params/target_state)")


@dataclass(frozen=True)
class Group:
    """Keys starting with `prefix`: kept when `weights` is the chosen one ("online" or
    "target"; None: always dropped), renamed to `rename` + the rest, `into` the backbone or
    the decoder."""
    prefix: str
    weights: str | None = None
    into: str = "backbone"
    rename: str = ""


@dataclass(frozen=True)
class Layout:
    source: str
    container: str  # top-level key of the file holding the state dict
    groups: tuple[Group, ...]
    reference: str  # the authors' repository and file(s) this layout is read from

    def has(self, weights: str) -> bool:
        return any(g.weights == weights for g in self.groups)


def _drop(*prefixes: str) -> tuple[Group, ...]:
    return tuple(Group(p) for p in prefixes)


POODLE = Layout("poodle", "model", (
    Group("backbone.", "online"), Group("teacher_backbone.", "target"),
    Group("decoder_blocks.", "online", "decoder", "blocks."),
    Group("decoder_laterals.", "online", "decoder", "laterals."),
    Group("teacher_decoder_blocks.", "target", "decoder", "blocks."),
    Group("teacher_decoder_laterals.", "target", "decoder", "laterals."),
    *_drop("dense_projector.", "dense_predictor.", "pooled_projector.", "pooled_predictor.",
           "teacher_dense_projector.", "teacher_pooled_projector.", "flow_model.",
           "affine_aug.", "flip_aug_online.", "flip_aug_teacher.")),
    "agentic-learning-ai-lab/poodle src/models/poodle.py (Poodle), written by "
    "src/utils/misc.py save_model as {'model', 'optimizer', 'epoch', 'args', 'scaler'}")

FLOWE = Layout("flowe", "model", (
    Group("encoder.", "online"), Group("target_encoder.", "target"),
    *_drop("projector.", "predictor.", "target_projector.", "flownet.", "data_aug.",
           "flip_aug_student.", "flip_aug_teacher.")),
    "agentic-learning-ai-lab/poodle src/models/flowe.py (Flowe: timm ResNet-50, "
    "output_stride=8), written by src/utils/misc.py save_model")

PIXPRO = Layout("pixpro", "model", (
    Group("module.encoder.", "online"), Group("module.encoder_k.", "target"),
    *_drop("module.projector.", "module.projector_k.", "module.value_transform.",
           "module.projector_instance", "module.predictor.")),
    "zdaxie/PixPro contrast/models/PixPro.py, main_pretrain.py save_checkpoint and "
    "publish_model.py (also rioyokotalab/PixPro-with-OpticalFlow, the same layout)")

DENSECL_RELEASED = Layout("densecl", "state_dict", (Group("", "online"),),
                          "WXinlong/DenseCL tools/extract_backbone_weights.py: "
                          "{'state_dict': torchvision keys, 'author': 'DenseCL'}")

DENSECL_RAW = Layout("densecl", "state_dict", (
    Group("backbone.", "online"), Group("encoder_k.0.", "target"),
    *_drop("encoder_q.", "encoder_k.1.", "queue")),
    "WXinlong/DenseCL openselfsup/models/densecl.py (mmcv epoch_*.pth; backbone aliases "
    "encoder_q.0)")

MOCO_V2 = Layout("moco_v2", "state_dict", (
    Group("module.encoder_q.", "online"), Group("module.encoder_k.", "target"),
    *_drop("module.encoder_q.fc.", "module.encoder_k.fc.", "module.queue")),
    "facebookresearch/moco main_moco.py save_checkpoint and moco/builder.py (MoCo)")


def group_of(key: str, groups: tuple[Group, ...]) -> Group | None:
    """The group of the longest prefix of `key`, or None."""
    matches = [g for g in groups if key.startswith(g.prefix)]
    return max(matches, key=lambda g: len(g.prefix)) if matches else None


def split_keys(keys, layout: Layout, weights: str):
    """(kept, dropped, unknown): kept = {key: (into, new name)} for the `weights` groups,
    dropped = Counter of dropped group prefixes, unknown = the first key of no group (or
    None)."""
    kept, dropped = {}, Counter()
    for key in keys:
        group = group_of(key, layout.groups)
        if group is None:
            return kept, dropped, key
        if group.weights == weights:
            kept[key] = (group.into, group.rename + key[len(group.prefix):])
        else:
            dropped[group.prefix] += 1
    return kept, dropped, None


def dropped_summary(dropped: Counter) -> str:
    """'dropping 312 keys: teacher_backbone.* (318), ...' (largest groups first)."""
    groups = ", ".join(f"{prefix}* ({n})" for prefix, n in dropped.most_common())
    return f"dropping {sum(dropped.values())} keys: {groups}" if dropped else "dropping nothing"


_RESNET_KEY = re.compile(r"(conv1\.weight|bn1\.(?P<p1>\w+)"
                         r"|layer[1-4]\.\d+\.(conv[123]\.weight|bn[123]\.(?P<p2>\w+)"
                         r"|downsample\.0\.weight|downsample\.1\.(?P<p3>\w+)))")
_SDM_KEY = re.compile(r"(blocks\.\d+\.(conv[123]\.weight|bn[123]\.(?P<p1>\w+))"
                      r"|laterals\.\d+\.(weight|bias))")
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def is_resnet_key(name: str) -> bool:
    """A torchvision ResNet trunk key (no fc)."""
    return _fullmatch_bn(_RESNET_KEY, name)


def is_decoder_key(name: str) -> bool:
    """A ``core.decoders.SpatialDecoder`` key."""
    return _fullmatch_bn(_SDM_KEY, name)


def _fullmatch_bn(pattern: re.Pattern, name: str) -> bool:
    m = pattern.fullmatch(name)
    return bool(m) and all(v in _BN_FIELDS for v in m.groupdict().values() if v)


# --- BYOL: google-deepmind/deepmind-research byol/utils/networks.py (haiku ResNet50,
# BlockV1 bottlenecks) and byol/utils/checkpointing.py (a dill pickle of
# {'experiment_state': _ByolExperimentState(online_params, target_params, online_state,
# target_state, opt_state), 'step', 'rng'}); params and state are flat {module path: {name:
# array}} with '/~/' between nesting levels.
BYOL_REFERENCE = ("google-deepmind/deepmind-research byol/utils/networks.py, "
                  "byol/byol_experiment.py and byol/utils/checkpointing.py")
BYOL_DROP = ("projector/", "predictor/", "classifier")
_TRUNK = r"res_net\d+/~/"
_HAIKU_MODULES = (  # haiku module path (after res_netNN/~/) -> torchvision module
    (re.compile(r"initial_conv(_\d+)?"), "conv1"),
    (re.compile(r"initial_batchnorm(_\d+)?"), "bn1"),
    (re.compile(r"block_group_(?P<g>\d)/~/block_(?P<b>\d+)/~/conv_(?P<k>\d)"),
     "layer{G}.{b}.conv{K}"),
    (re.compile(r"block_group_(?P<g>\d)/~/block_(?P<b>\d+)/~/batchnorm_(?P<k>\d)"),
     "layer{G}.{b}.bn{K}"),
    (re.compile(r"block_group_(?P<g>\d)/~/block_(?P<b>\d+)/~/shortcut_conv"),
     "layer{G}.{b}.downsample.0"),
    (re.compile(r"block_group_(?P<g>\d)/~/block_(?P<b>\d+)/~/shortcut_batchnorm"),
     "layer{G}.{b}.downsample.1"),
)
# haiku field -> torchvision field; convs hold 'w' (HWIO), batch norms 'scale'/'offset'
# (1, 1, 1, C) in the params and 'mean_ema'/'var_ema' sub-modules' 'average' in the state
_HAIKU_FIELDS = {"w": "weight", "scale": "weight", "offset": "bias",
                 "mean_ema/average": "running_mean", "var_ema/average": "running_var"}
HAIKU_SKIPPED = ("mean_ema/counter", "mean_ema/hidden", "var_ema/counter", "var_ema/hidden")


def haiku_name(module: str, field: str) -> str | None:
    """The torchvision name of haiku parameter `field` of `module` (a BN state reads
    ``<bn path>/~/mean_ema`` with field ``average`` as module ``<bn path>``, field
    ``mean_ema/average``), or None."""
    trunk = re.match(_TRUNK, module)
    if not trunk or field not in _HAIKU_FIELDS:
        return None
    rest = module[trunk.end():]
    for pattern, template in _HAIKU_MODULES:
        m = pattern.fullmatch(rest)
        if m:
            f = m.groupdict()
            name = template.format(G=int(f.get("g") or 0) + 1, b=f.get("b"),
                                   K=int(f.get("k") or 0) + 1)
            target = f"{name}.{_HAIKU_FIELDS[field]}"
            is_conv = name.endswith(("conv1", "conv2", "conv3", "downsample.0"))
            return target if is_conv == (field == "w") else None
    return None


def haiku_entries(params: dict, state: dict) -> dict[tuple[str, str], object]:
    """{(module, field): value} of haiku `params` ({module: {name: array}}) and `state`,
    whose ``<bn path>/~/mean_ema`` {average, hidden, counter} become module ``<bn path>``,
    fields ``mean_ema/average`` ..."""
    out = {}
    for module, fields in params.items():
        out.update({(module, f): v for f, v in _fields(fields).items()})
    for module, fields in state.items():
        bn, _, ema = module.rpartition("/~/")
        out.update({(bn, f"{ema}/{f}"): v for f, v in _fields(fields).items()})
    return out


def _fields(fields) -> dict:
    """A module's {name: value}; anything else as one unnamed field (which fails mapping)."""
    return fields if isinstance(fields, dict) else {"?": fields}
