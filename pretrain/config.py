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

from .methods import METHODS, get_method_class
from .train import PretrainSchedule

CONFIG_DIR = Path(__file__).parent / "configs"
SECTIONS = {"cited", "model", "data", "flow", "schedule"}
DATA_KEYS = {"dt_frames", "dt_seconds", "repeats"}
SCHEDULE_KEYS = {f.name for f in dataclasses.fields(PretrainSchedule)} | {"epochs",
                                                                          "warmup_epochs"}


# setting one of these replaces the other
EXCLUSIVE = {"steps": "epochs", "epochs": "steps", "warmup_steps": "warmup_epochs",
             "warmup_epochs": "warmup_steps", "dt_frames": "dt_seconds",
             "dt_seconds": "dt_frames"}


class ConfigError(ValueError):
    pass


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
    _check(preset["data"], DATA_KEYS, f"{where}.data")
    _check(preset["schedule"], SCHEDULE_KEYS, f"{where}.schedule")
    s = preset["schedule"]
    if ("steps" in s) == ("epochs" in s):
        raise ConfigError(f"{where}.schedule: give exactly one of steps and epochs")
    if "warmup_steps" in s and "warmup_epochs" in s:
        raise ConfigError(f"{where}.schedule: give at most one of warmup_steps, warmup_epochs")
    if get_method_class(method).needs_flow and not preset.get("flow"):
        raise ConfigError(f"{where}: {method} needs flow: set 'flow'")


def load_preset(method: str, preset: str) -> dict:
    get_method_class(method)  # unknown method: lists the known ones
    path = CONFIG_DIR / f"{method}.yaml"
    if not path.is_file():
        raise ConfigError(f"no config for method {method!r} ({path})")
    doc = yaml.safe_load(path.read_text())
    _check(doc, {"method", "presets"}, path.name)
    if doc.get("method") != method:
        raise ConfigError(f"{path.name} is for method {doc.get('method')!r}, not {method!r}")
    if preset not in doc["presets"]:
        raise ConfigError(f"{path.name}: no preset {preset!r}; known: "
                          f"{', '.join(sorted(doc['presets']))}")
    out = doc["presets"][preset]
    validate_preset(method, out, f"{path.name}:{preset}")
    return out


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """``schedule.lr=0.05``, ``model.view_size=[64,128]``, ``flow=dis``: values are YAML."""
    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value")
        section, _, name = key.partition(".")
        parsed = yaml.safe_load(value)
        if name:
            if section not in ("model", "data", "schedule"):
                raise ConfigError(f"override {key!r}: sections are model, data, schedule")
            config[section].pop(EXCLUSIVE.get(name), None)
            config[section][name] = parsed
        elif section in ("flow", "cited"):
            config[section] = parsed
        else:
            raise ConfigError(f"override {key!r}: use section.key (model.arch=resnet18)")
    return config


def resolve(method: str, config: dict, *, num_videos: int, seed: int) -> dict:
    """Validated config with the schedule in steps (an epoch = every video visited once,
    each visit giving `repeats` pairs: PooDLe App. A repeated sampling)."""
    validate_preset(method, config, "config")
    s = dict(config["schedule"])
    pairs_per_epoch = num_videos * config["data"].get("repeats", 1)
    steps_per_epoch = pairs_per_epoch / s["batch_size"]
    if "epochs" in s:
        s["steps"] = max(1, math.ceil(s.pop("epochs") * steps_per_epoch))
    if "warmup_epochs" in s:
        s["warmup_steps"] = math.ceil(s.pop("warmup_epochs") * steps_per_epoch)
    s["seed"] = seed
    return {"method": method, **{k: v for k, v in config.items() if k != "schedule"},
            "schedule": s}


def known_methods() -> list[str]:
    return sorted(METHODS)
