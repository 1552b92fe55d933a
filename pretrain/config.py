"""Pretraining configs: one YAML per method (``pretrain/configs/<method>.yaml``) with a
``paper`` preset (every number cited) and a ``smoke`` preset, validated strictly (unknown
keys fail), overridable with ``section.key=value``, and resolved (epochs -> steps) into the
config saved beside the run and in the checkpoint's meta."""
from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path

import yaml

from core.decoders import DECODER_ORDERS
from core.inputs import IMAGENET
from core.values import Range, is_number, is_whole, parse_value

from .augment import COLOURS
from .catalogue import TOP_LEVEL_KEYS
from .data.samples import SAMPLE_KEYS
from .flow.estimators import flow_spec
from .flow.trajectories import FRAME_SELECTIONS
from .methods import METHODS, get_method_class
from .methods.pixpro import MASK_UNITS
from .methods.poodle import CROP_GEOMETRIES
from .train import OPTIMIZERS, PretrainSchedule

CONFIG_DIR = Path(__file__).parent / "configs"
SECTIONS = {"cited", "model", "data", "flow", "schedule"}

def data_keys(method: str) -> set[str]:
    """The data section's keys for the method's sample kind (pairs or clips)."""
    return {*SAMPLE_KEYS[get_method_class(method).samples], "repeats"}

SCHEDULE_KEYS = {f.name for f in dataclasses.fields(PretrainSchedule)} | {"epochs",
                                                                          "warmup_epochs"}


# setting one of these replaces the other
EXCLUSIVE = {"steps": "epochs", "epochs": "steps", "warmup_steps": "warmup_epochs",
             "warmup_epochs": "warmup_steps", "dt_frames": "dt_seconds",
             "dt_seconds": "dt_frames"}


class ConfigError(ValueError):
    pass


WHOLE_AT_LEAST_1, WHOLE_AT_LEAST_0 = Range(1, whole=True), Range(0, whole=True)
SCHEDULE_RANGES = {
    "steps": WHOLE_AT_LEAST_1, "batch_size": WHOLE_AT_LEAST_1,
    "lr": Range(0, open_low=True), "weight_decay": Range(0),
    "warmup_steps": WHOLE_AT_LEAST_0, "checkpoint_every": WHOLE_AT_LEAST_1,
    "export_every": Range(0, whole=True, note="(0: off)"), "seed": WHOLE_AT_LEAST_0,
    "epochs": Range(0, open_low=True), "warmup_epochs": Range(0),
}
DATA_RANGES = {"repeats": WHOLE_AT_LEAST_1, "clip_frames": WHOLE_AT_LEAST_1,
               "clip_fps": Range(0, open_low=True), "partners": WHOLE_AT_LEAST_1,
               "points": WHOLE_AT_LEAST_1, "gamma": Range(0), "delta": Range(0, open_low=True)}
DATA_CHOICES = {"frame_selection": FRAME_SELECTIONS}
# model values with bounds of their own (others: by the type of the constructor's default)
MODEL_RANGES = {"ema_base": Range(0, 1), "momentum": Range(0, 1), "loss_lambda": Range(0, 1),
                "temperature": Range(0, open_low=True)}
MODEL_CHOICES = {"decoder_order": DECODER_ORDERS, "colour": tuple(COLOURS),
                 "crop_geometry": CROP_GEOMETRIES, "mask_units": MASK_UNITS}


def _check_value(where: str, value, allowed: Range) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}: must be {'a whole number ' if allowed.whole else ''}"
                          f"{allowed}, got {value!r}")


def _check_span(where: str, value, kind: str) -> None:
    """A value or a [min, max] range of values > 0 (dt_frames, dt_seconds)."""
    values = value if isinstance(value, list) else [value]
    good = (len(values) in (1, 2) and all(
        (is_whole(v) if kind == "int" else is_number(v)) and v > 0 for v in values)
        and values[0] <= values[-1])
    if not good:
        raise ConfigError(f"{where}: a {'whole number' if kind == 'int' else 'number'} > 0 "
                          f"or a [min, max] range of them, got {value!r}")


def _check_model_values(method: str, model: dict, where: str) -> None:
    """Model values have the type of the constructor's default; numbers are finite, sizes
    and counts >= 1, pairs > 0 (scale and area ranges ordered), other numbers >= 0."""
    defaults = {}
    for cls in reversed(get_method_class(method).__mro__):
        if "__init__" in vars(cls):
            defaults.update({p.name: p.default for p in
                             inspect.signature(cls.__init__).parameters.values()
                             if p.kind == p.KEYWORD_ONLY})
    for key, value in model.items():
        default, at = defaults.get(key), f"{where}.{key}"
        if key in MODEL_RANGES:
            _check_value(at, value, MODEL_RANGES[key])
        elif key in MODEL_CHOICES:
            if value not in MODEL_CHOICES[key]:
                raise ConfigError(f"{at}: {value!r} is not one of "
                                  f"{', '.join(MODEL_CHOICES[key])}")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{at}: expected true or false, got {value!r}")
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise ConfigError(f"{at}: expected a name like {default!r}, got {value!r}")
        elif is_whole(default):
            _check_value(at, value, WHOLE_AT_LEAST_1)
        elif isinstance(default, float):
            _check_value(at, value, Range(0))
        elif isinstance(default, tuple) and len(default) == 2:
            sizes, ordered = key.endswith("_size"), key.endswith(("_scale", "_area", "_ratio"))
            if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(
                    (is_whole(v) if sizes else is_number(v)) and v > 0 for v in value)
                    and (not ordered or value[0] <= value[1])):
                raise ConfigError(f"{at}: " + ("[height, width], whole numbers >= 1" if sizes
                                               else "[min, max], numbers > 0" if ordered
                                               else "two numbers > 0") + f", got {value!r}")


def model_keys(method: str) -> set[str]:
    """The keyword arguments the method's constructor (and its bases') accept."""
    keys = set()
    for cls in get_method_class(method).__mro__:
        if "__init__" in vars(cls):
            keys |= {p.name for p in inspect.signature(cls.__init__).parameters.values()
                     if p.kind == p.KEYWORD_ONLY}
    return keys


def _check(keys, known, where: str) -> None:
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")


def validate_preset(method: str, preset: dict, where: str) -> None:
    _check(preset, SECTIONS, where)
    for section in ("model", "data", "schedule"):
        if not isinstance(preset.get(section), dict):
            raise ConfigError(f"{where}: section {section!r} is missing or not a mapping")
    _check(preset["model"], model_keys(method), f"{where}.model")
    _check(preset["data"], data_keys(method), f"{where}.data")
    _check(preset["schedule"], SCHEDULE_KEYS, f"{where}.schedule")
    s = preset["schedule"]
    for key, value in s.items():
        if key in SCHEDULE_RANGES:
            _check_value(f"{where}.schedule.{key}", value, SCHEDULE_RANGES[key])
    if "optimizer" in s and s["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"{where}.schedule.optimizer: {s['optimizer']!r} is not one of "
                          f"{', '.join(OPTIMIZERS)}")
    d = preset["data"]
    if "dt_frames" in d:
        _check_span(f"{where}.data.dt_frames", d["dt_frames"], "int")
    if "dt_seconds" in d:
        _check_span(f"{where}.data.dt_seconds", d["dt_seconds"], "num")
    for key, value in d.items():
        if key in DATA_RANGES:
            _check_value(f"{where}.data.{key}", value, DATA_RANGES[key])
        if key in DATA_CHOICES and value not in DATA_CHOICES[key]:
            raise ConfigError(f"{where}.data.{key}: {value!r} is not one of "
                              f"{', '.join(DATA_CHOICES[key])}")
    if d.get("trajectories") is not None and not isinstance(d["trajectories"], str):
        raise ConfigError(f"{where}.data.trajectories: a trajectory store folder, got "
                          f"{d['trajectories']!r}")
    missing = [k for k in ("clip_frames", "clip_fps") if k in data_keys(method) and k not in d]
    if missing:
        raise ConfigError(f"{where}.data: {method} samples clips: set {', '.join(missing)}")
    _check_model_values(method, preset["model"], f"{where}.model")
    if ("steps" in s) == ("epochs" in s):
        raise ConfigError(f"{where}.schedule: give exactly one of steps and epochs")
    if "warmup_steps" in s and "warmup_epochs" in s:
        raise ConfigError(f"{where}.schedule: give at most one of warmup_steps, warmup_epochs")
    if get_method_class(method).needs_flow and not preset.get("flow"):
        raise ConfigError(f"{where}: {method} needs flow: set 'flow'")
    if preset.get("flow") is not None:
        try:
            flow_spec(preset["flow"])
        except (KeyError, ValueError) as e:
            raise ConfigError(f"{where}.flow: {e.args[0]}") from None
    try:
        get_method_class(method).check_config(preset["model"], s, f"{where}.model")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def load_preset(method: str, preset: str) -> dict:
    get_method_class(method)  # unknown method: lists the known ones
    path = CONFIG_DIR / f"{method}.yaml"
    if not path.is_file():
        raise ConfigError(f"no config for method {method!r} ({path})")
    doc = yaml.safe_load(path.read_text())
    _check(doc, TOP_LEVEL_KEYS, path.name)
    if doc.get("method") != method:
        raise ConfigError(f"{path.name} is for method {doc.get('method')!r}, not {method!r}")
    if preset not in doc["presets"]:
        raise ConfigError(f"{path.name}: no preset {preset!r}; known: "
                          f"{', '.join(sorted(doc['presets']))}")
    out = doc["presets"][preset]
    validate_preset(method, out, f"{path.name}:{preset}")
    return out


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """``schedule.lr=0.05``, ``model.view_size=[64,128]``, ``flow=dis``,
    ``flow.iterations=24``: values are YAML."""
    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value")
        section, _, name = key.partition(".")
        parsed = parse_value(item, value, ConfigError)
        if name and section == "flow":  # one setting of the estimator
            flow = config.get("flow")
            config["flow"] = {**(flow if isinstance(flow, dict) else
                                 {"estimator": flow} if flow else {}), name: parsed}
        elif name:
            if section not in ("model", "data", "schedule"):
                raise ConfigError(f"override {key!r}: sections are model, data, schedule, "
                                  f"flow")
            config[section].pop(EXCLUSIVE.get(name), None)
            config[section][name] = parsed
        elif section in ("flow", "cited"):
            config[section] = parsed
        else:
            raise ConfigError(f"override {key!r}: use section.key (model.arch=resnet18)")
    return config


def resolve(method: str, config: dict, *, num_videos: int, seed: int) -> dict:
    """Validated config with the schedule in steps (an epoch = every video visited once,
    each visit giving `repeats` samples: PooDLe App. A repeated sampling)."""
    validate_preset(method, config, f"{method} config")
    s = dict(config["schedule"])
    samples_per_epoch = num_videos * config["data"].get("repeats", 1)
    steps_per_epoch = samples_per_epoch / s["batch_size"]
    if "epochs" in s:
        s["steps"] = max(1, math.ceil(s.pop("epochs") * steps_per_epoch))
    if "warmup_epochs" in s:
        s["warmup_steps"] = math.ceil(s.pop("warmup_epochs") * steps_per_epoch)
    s["seed"] = seed
    # what the trunk is fed (core.inputs): a run folder of another convention is not resumed
    return {"method": method, **{k: v for k, v in config.items() if k != "schedule"},
            "schedule": s, "input": IMAGENET.meta()}


def known_methods() -> list[str]:
    return sorted(METHODS)


def differing_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs (``runtime.world_size``)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differing_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out
