"""Suites: YAML data in benchmarks/suites/, validated strictly (unknown keys fail), every
protocol number cited in ``source``; ``resolve_suite`` applies a scale and key=value
overrides and returns the resolved config that is saved with every run."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml

SUITE_DIR = Path(__file__).with_name("suites")

SCHEMA = {
    "name": str, "description": str, "task": str, "dataset": str, "splits": dict,
    "head": str, "finetune": bool, "protocol": dict, "eval": dict, "class_groups": str,
    "source": dict, "scales": dict,
}
PROTOCOL = {
    "iterations": int, "batch_size": int, "optimizer": str, "lr": float, "momentum": float,
    "weight_decay": float, "schedule": str, "poly_power": float, "resize": dict,
    "crop": list, "flip": bool, "checkpoint_every": int,
}
EVAL = {"mode": str, "crop": list, "stride": list}
SPLITS = {"train": str, "eval": str}
TASKS = ("semantic_segmentation",)
CITED = ("iterations", "batch_size", "lr", "momentum", "weight_decay", "schedule",
         "poly_power", "resize", "crop", "eval")


class SuiteError(ValueError):
    pass


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def _check_keys(where: str, data: dict, schema: dict, required=True) -> None:
    unknown = sorted(set(data) - set(schema))
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(schema)}")
    if required:
        missing = sorted(set(schema) - set(data))
        if missing:
            raise SuiteError(f"{where}: missing key(s) {missing}")
    for key, value in data.items():
        want = schema[key]
        ok = isinstance(value, want) or (want is float and isinstance(value, int)
                                          and not isinstance(value, bool))
        if want is int and isinstance(value, bool):
            ok = False
        if not ok:
            raise SuiteError(f"{where}.{key}: expected {want.__name__}, got {value!r}")


def validate_suite(data: dict, where: str = "suite") -> dict:
    if not isinstance(data, dict):
        raise SuiteError(f"{where}: a suite is a mapping")
    _check_keys(where, data, SCHEMA, required=False)
    missing = sorted(set(SCHEMA) - set(data) - {"scales", "finetune", "eval"})
    if missing:
        raise SuiteError(f"{where}: missing key(s) {missing}")
    if data["task"] not in TASKS:
        raise SuiteError(f"{where}.task: {data['task']!r} is not one of {TASKS}")
    _check_keys(f"{where}.splits", data["splits"], SPLITS)
    _check_keys(f"{where}.protocol", data["protocol"], PROTOCOL)
    _check_keys(f"{where}.eval", data.get("eval", {"mode": "whole"}), EVAL, required=False)
    _check_protocol(where, data["protocol"], data.get("eval", {"mode": "whole"}))
    uncited = [k for k in CITED if k not in data["source"]]
    if uncited:
        raise SuiteError(f"{where}.source: no source for {uncited}; every number needs one")
    for scale, body in data.get("scales", {}).items():
        _check_keys(f"{where}.scales.{scale}", body, {"protocol": dict, "eval": dict}, False)
        _check_keys(f"{where}.scales.{scale}.protocol", body.get("protocol", {}), PROTOCOL,
                    required=False)
        _check_keys(f"{where}.scales.{scale}.eval", body.get("eval", {}), EVAL, required=False)
    from readout.datasets import get_dataset_class
    from readout.heads import get_head_class
    get_dataset_class(data["dataset"])
    get_head_class(data["head"])
    return data


def _check_protocol(where: str, p: dict, ev: dict) -> None:
    if p["optimizer"] != "sgd" or p["schedule"] != "poly":
        raise SuiteError(f"{where}.protocol: only optimizer 'sgd' with schedule 'poly' exist")
    if len(p["crop"]) != 2:
        raise SuiteError(f"{where}.protocol.crop: [height, width]")
    if set(p["resize"]) not in ({"short_side"}, {"scale", "ratio"}):
        raise SuiteError(f"{where}.protocol.resize: either {{short_side: [a, b]}} or "
                         f"{{scale: [w, h], ratio: [r0, r1]}}")
    if ev.get("mode", "whole") not in ("whole", "slide"):
        raise SuiteError(f"{where}.eval.mode: 'whole' or 'slide'")
    if ev.get("mode") == "slide" and not (ev.get("crop") and ev.get("stride")):
        raise SuiteError(f"{where}.eval: slide mode needs crop and stride")


def load_suite(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = SUITE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise KeyError(f"unknown suite {name_or_path!r}; known suites: "
                           f"{', '.join(suite_names())}")
    data = yaml.safe_load(path.read_text())
    return validate_suite(data, where=path.name)


OVERRIDABLE = ([f"splits.{k}" for k in SPLITS] + [f"protocol.{k}" for k in PROTOCOL]
               + [f"eval.{k}" for k in EVAL] + ["head", "class_groups", "finetune"])


def apply_overrides(resolved: dict, overrides: list[str]) -> dict:
    """``key=value`` with dotted keys (``protocol.iterations=100``); values parsed as YAML."""
    valid = OVERRIDABLE
    for item in overrides:
        if "=" not in item:
            raise SuiteError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        if key not in valid:
            raise SuiteError(f"unknown override key {key!r}; valid keys: {', '.join(valid)}")
        node = resolved
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw)
    return resolved


def resolve_suite(name: str, *, scale: str | None = None, overrides=()) -> dict:
    """Suite + scale + overrides, validated again, with ``scale`` and ``overrides`` kept."""
    suite = load_suite(name)
    resolved = copy.deepcopy({k: v for k, v in suite.items() if k != "scales"})
    resolved.setdefault("eval", {"mode": "whole"})
    resolved.setdefault("finetune", False)
    if scale:
        scales = suite.get("scales", {})
        if scale not in scales:
            raise SuiteError(f"suite {name} has no scale {scale!r}; known: {sorted(scales)}")
        resolved["protocol"].update(copy.deepcopy(scales[scale].get("protocol", {})))
        resolved["eval"].update(copy.deepcopy(scales[scale].get("eval", {})))
    apply_overrides(resolved, list(overrides))
    validate_suite(resolved, where=f"{name} (resolved)")
    resolved["scale"] = scale or "paper"
    resolved["overrides"] = list(overrides)
    return resolved


def suite_hash(resolved: dict) -> str:
    """Hash of what determines results (not the prose: description and sources)."""
    keep = {k: v for k, v in resolved.items() if k not in ("description", "source")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]
