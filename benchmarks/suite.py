"""Suites: YAML data in benchmarks/suites/, validated strictly (unknown keys fail), every
protocol number cited in ``source``; ``resolve_suite`` applies a scale and key=value
overrides and returns the resolved config that is saved with every run."""
from __future__ import annotations

import copy
import hashlib
import json
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.values import Range, is_number, is_whole, parse_value

SUITE_DIR = Path(__file__).with_name("suites")

SCHEMA = {
    "name": str, "description": str, "task": str, "dataset": str, "splits": dict,
    "head": str, "finetune": bool, "protocol": dict, "eval": dict, "class_groups": str,
    "source": dict, "scales": dict, "head_options": dict,
}
SPLITS = {"train": str, "eval": str}
EVAL = {"mode": str, "crop": list, "stride": list, "resize": list}
SEG_LOSSES = ("cross_entropy", "hard_pixel_mining")
# cross_entropy's mean: over labelled pixels, or over all pixels with the ignored ones
# counting 0 (mmsegmentation's CrossEntropyLoss default, avg_non_ignore=False)
LOSS_AVERAGES = ("labelled", "all_pixels")
SEG_SCHEDULES = {"poly": ("poly_power",), "step": ("lr_steps", "gamma")}
SEG_SCHEDULE_OPTIONS = {"poly": ("poly_min_lr",)}  # the poly decay's floor (mmseg eta_min)


@dataclass(frozen=True)
class Task:
    """What a suite of this task holds: its protocol keys, the numbers that need a
    source, the suite keys it needs beyond the common ones, the head registry."""
    protocol: dict
    cited: tuple[str, ...]
    required: tuple[str, ...]
    forbidden: tuple[str, ...]
    optional: dict = dataclasses.field(default_factory=dict)  # protocol keys with defaults;
    # cited when given

    @property
    def all_protocol(self) -> dict:
        return {**self.protocol, **self.optional}


TASKS = {
    "semantic_segmentation": Task(
        protocol={"iterations": int, "batch_size": int, "optimizer": str, "lr": float,
                  "momentum": float, "weight_decay": float, "schedule": str,
                  "resize": dict, "crop": list, "flip": bool, "checkpoint_every": int},
        cited=("iterations", "batch_size", "lr", "momentum", "weight_decay", "schedule",
               "resize", "crop", "eval"),
        required=("class_groups",), forbidden=(),
        # detectron2's linear warmup, weight decay of norm layers (WEIGHT_DECAY_NORM), and
        # the DeepLab project's hard_pixel_mining loss (DeepLabCE, top loss_top_k of pixels);
        # poly_power with schedule "poly", lr_steps (iterations) and gamma with "step"
        optional={"warmup_iterations": int, "warmup_factor": float, "weight_decay_norm": float,
                  "loss": str, "loss_top_k": float, "loss_average": str,
                  "poly_power": float, "poly_min_lr": float, "lr_steps": list,
                  "gamma": float,
                  # one head per learning rate on one frozen forward (DINOv2's linear
                  # eval), the best on a held-out slice of the training split
                  "lr_sweep": list, "lr_sweep_holdout": float}),
    "object_detection": Task(
        protocol={"epochs": float, "batch_size": int, "optimizer": str, "lr": float,
                  "momentum": float, "weight_decay": float, "schedule": str,
                  "lr_steps": list, "gamma": float, "warmup_iterations": int,
                  "warmup_factor": float, "flip": bool, "checkpoint_every": int},
        cited=("epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule",
               "lr_steps", "gamma", "warmup_iterations", "warmup_factor", "flip"),
        required=(), forbidden=("eval", "class_groups")),
    # Hummingbird nearest-neighbour segmentation (readout/knn.py): nothing trains; the
    # training split fills a memory bank through the readout's own crop / resize / flip
    "retrieval_segmentation": Task(
        protocol={"k": int, "temperature": float, "memory_size": int, "augment_epochs": int,
                  "resize": dict, "crop": list, "flip": bool},
        cited=("k", "temperature", "memory_size", "augment_epochs", "resize", "crop", "flip",
               "eval"),
        required=("class_groups",), forbidden=()),
}
# The allowed range of every numeric protocol value (types: the task's protocol schema)
AT_LEAST_1, POSITIVE, NON_NEGATIVE = Range(1), Range(0, open_low=True), Range(0)
RANGES = {
    "iterations": AT_LEAST_1, "batch_size": AT_LEAST_1, "checkpoint_every": AT_LEAST_1,
    "lr": POSITIVE, "momentum": Range(0, 1, open_high=True), "weight_decay": NON_NEGATIVE,
    "poly_power": NON_NEGATIVE, "poly_min_lr": NON_NEGATIVE, "epochs": POSITIVE,
    "gamma": POSITIVE,
    "warmup_iterations": NON_NEGATIVE, "warmup_factor": Range(0, 1, open_low=True),
    "k": AT_LEAST_1, "temperature": POSITIVE, "memory_size": AT_LEAST_1,
    "augment_epochs": AT_LEAST_1, "weight_decay_norm": NON_NEGATIVE,
    "loss_top_k": Range(0, 1, open_low=True), "lr_sweep_holdout": Range(0, 0.5, open_low=True),
}


COMMON_REQUIRED = ("name", "description", "task", "dataset", "splits", "head", "protocol",
                   "source")


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


def task_of(data: dict, where: str = "suite") -> Task:
    if data.get("task") not in TASKS:
        raise SuiteError(f"{where}.task: {data.get('task')!r} is not one of {sorted(TASKS)}")
    return TASKS[data["task"]]


def validate_suite(data: dict, where: str = "suite") -> dict:
    if not isinstance(data, dict):
        raise SuiteError(f"{where}: a suite is a mapping")
    _check_keys(where, data, SCHEMA, required=False)
    task = task_of(data, where)
    missing = sorted(set(COMMON_REQUIRED + task.required) - set(data))
    if missing:
        raise SuiteError(f"{where}: missing key(s) {missing}")
    present = sorted(set(task.forbidden) & set(data))
    if present:
        raise SuiteError(f"{where}: {data['task']} suites have no {present}")
    _check_keys(f"{where}.splits", data["splits"], SPLITS)
    _check_keys(f"{where}.protocol", data["protocol"], task.all_protocol, required=False)
    missing = sorted(set(task.protocol) - set(data["protocol"]))
    if missing:
        raise SuiteError(f"{where}.protocol: missing key(s) {missing}")
    if "eval" in task.cited:
        _check_keys(f"{where}.eval", data.get("eval", {"mode": "whole"}), EVAL, required=False)
    _check_protocol(where, data["task"], data["protocol"], data.get("eval", {"mode": "whole"}))
    if data["task"] != "semantic_segmentation" and data.get("finetune"):
        raise SuiteError(f"{where}.finetune: {data['task']} readouts exist with a frozen "
                         f"backbone only")
    if data.get("finetune") and "lr_sweep" in data["protocol"]:
        raise SuiteError(f"{where}.protocol.lr_sweep: heads share one frozen backbone; a "
                         f"finetuned one is trained by a single learning rate")
    cited = (*task.cited, *(k for k in task.optional if k in data["protocol"]))
    uncited = [k for k in cited if k not in data["source"]]
    if uncited:
        raise SuiteError(f"{where}.source: no source for {uncited}; every number needs one")
    scale_schema = ({"protocol": dict, "eval": dict, "head_options": dict} if "eval" in task.cited
                    else {"protocol": dict})
    for scale, body in data.get("scales", {}).items():
        _check_keys(f"{where}.scales.{scale}", body, scale_schema, False)
        _check_keys(f"{where}.scales.{scale}.protocol", body.get("protocol", {}),
                    task.all_protocol, required=False)
        _check_keys(f"{where}.scales.{scale}.eval", body.get("eval", {}), EVAL, required=False)
    from readout.datasets import get_dataset_class
    get_dataset_class(data["dataset"])
    _check_head_options(where, data)
    return data


def head_option_names(data: dict) -> set[str]:
    """The keyword arguments a suite's head takes beyond what the runner passes itself."""
    import inspect
    cls = head_class(data)
    if data["task"] != "semantic_segmentation":
        return set()
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name for p in params if p.kind == p.KEYWORD_ONLY} - {
        "input_shape", "num_classes", "in_feature"}


def _check_head_options(where: str, data: dict) -> None:
    options = data.get("head_options", {})
    known = head_option_names(data)
    unknown = sorted(set(options) - known)
    if unknown:
        raise SuiteError(f"{where}.head_options: unknown key(s) {unknown} for head "
                         f"{data['head']!r}; valid keys: {sorted(known)}")
    if options:
        try:
            head_class(data).check_options(options, crop=data["protocol"].get("crop"))
        except ValueError as e:
            raise SuiteError(f"{where}.head_options: {e}") from None


def head_class(data: dict):
    """The registered head (segmentation) or detector builder a suite names."""
    if data["task"] == "object_detection":
        from readout.detection import get_detector_class
        return get_detector_class(data["head"])
    if data["task"] == "retrieval_segmentation":
        import readout.knn  # noqa: F401  (registration)
        from readout.heads import RETRIEVAL_HEADS
        return RETRIEVAL_HEADS.get_class(data["head"])
    from readout.heads import get_head_class
    return get_head_class(data["head"])


def _check_ranges(where: str, p: dict, ev: dict) -> None:
    for key, value in p.items():
        if key in RANGES and value not in RANGES[key]:
            raise SuiteError(f"{where}.protocol.{key}: must be {RANGES[key]}, got {value!r}")
    sizes = {"protocol.crop": p.get("crop"), "eval.crop": ev.get("crop"),
             "eval.stride": ev.get("stride"), "eval.resize": ev.get("resize"),
             "protocol.resize.short_side":
             p.get("resize", {}).get("short_side"), "protocol.resize.scale":
             p.get("resize", {}).get("scale")}
    for key, value in sizes.items():
        if value is not None and not (isinstance(value, list) and len(value) == 2 and all(
                is_whole(v) and v >= 1 for v in value)):
            raise SuiteError(f"{where}.{key}: two whole numbers >= 1, got {value!r}")
    short = p.get("resize", {}).get("short_side")
    if short and short[0] > short[1]:
        raise SuiteError(f"{where}.protocol.resize.short_side: [min, max], got {short!r}")
    ratio = p.get("resize", {}).get("ratio")
    if ratio is not None and not (isinstance(ratio, list) and len(ratio) == 2 and all(
            is_number(r) and r > 0 for r in ratio) and ratio[0] <= ratio[1]):
        raise SuiteError(f"{where}.protocol.resize.ratio: [min, max] > 0, got {ratio!r}")


def _check_protocol(where: str, task: str, p: dict, ev: dict) -> None:
    _check_ranges(where, p, ev)
    if task == "object_detection":
        if p["optimizer"] != "sgd" or p["schedule"] != "step":
            raise SuiteError(f"{where}.protocol: detection has optimizer 'sgd' with schedule "
                             f"'step'")
        if not all(isinstance(e, (int, float)) and 0 <= e for e in p["lr_steps"]):
            raise SuiteError(f"{where}.protocol.lr_steps: epochs at which lr *= gamma")
        return
    if task == "semantic_segmentation":
        if p["optimizer"] != "sgd" or p["schedule"] not in SEG_SCHEDULES:
            raise SuiteError(f"{where}.protocol: optimizer 'sgd' with schedule 'poly' or "
                             f"'step'")
        needs = SEG_SCHEDULES[p["schedule"]]
        missing = [k for k in needs if k not in p]
        if missing:
            raise SuiteError(f"{where}.protocol: schedule {p['schedule']!r} needs "
                             f"{', '.join(missing)}")
        allowed = (*needs, *SEG_SCHEDULE_OPTIONS.get(p["schedule"], ()))
        extra = [k for k in ("poly_power", "poly_min_lr", "lr_steps", "gamma")
                 if k in p and k not in allowed]
        if extra:
            raise SuiteError(f"{where}.protocol: {', '.join(extra)} do not apply to schedule "
                             f"{p['schedule']!r}")
        if "lr_steps" in p and not all(is_whole(e) and 0 <= e for e in p["lr_steps"]):
            raise SuiteError(f"{where}.protocol.lr_steps: iterations at which lr *= gamma")
        sweep = p.get("lr_sweep")
        if sweep is not None and not (isinstance(sweep, list) and sweep and all(
                is_number(v) and v > 0 for v in sweep) and len(set(sweep)) == len(sweep)):
            hint = (" (YAML reads 1e-4 as text: write 1.0e-4)"
                    if any(isinstance(v, str) for v in sweep or []) else "")
            raise SuiteError(f"{where}.protocol.lr_sweep: distinct learning rates > 0, one "
                             f"head each, got {sweep!r}{hint}")
        if "lr_sweep_holdout" in p and sweep is None:
            raise SuiteError(f"{where}.protocol.lr_sweep_holdout: only with lr_sweep")
    if p.get("loss", "cross_entropy") not in SEG_LOSSES:
        raise SuiteError(f"{where}.protocol.loss: {p['loss']!r} is not one of "
                         f"{', '.join(SEG_LOSSES)}")
    if p.get("loss_average", "labelled") not in LOSS_AVERAGES:
        raise SuiteError(f"{where}.protocol.loss_average: {p['loss_average']!r} is not one of "
                         f"{', '.join(LOSS_AVERAGES)}")
    if "loss_average" in p and p.get("loss", "cross_entropy") != "cross_entropy":
        raise SuiteError(f"{where}.protocol.loss_average: only with loss cross_entropy")
    if "poly_min_lr" in p and p["poly_min_lr"] >= p["lr"]:
        raise SuiteError(f"{where}.protocol.poly_min_lr: {p['poly_min_lr']} is not below lr "
                         f"{p['lr']}")
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
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SuiteError(f"{path}: not valid YAML ({e})") from None
    return validate_suite(data, where=path.name)


def overridable(task: str) -> list[str]:
    """The dotted keys a suite of `task` accepts as ``key=value`` overrides."""
    spec = TASKS[task]
    keys = [f"splits.{k}" for k in SPLITS] + [f"protocol.{k}" for k in spec.all_protocol]
    if "eval" in spec.cited:
        keys += [f"eval.{k}" for k in EVAL]
    if task == "semantic_segmentation":
        keys.append("head_options.<name>")  # checked against the head's keyword arguments
    return keys + ["head", "finetune"] + [k for k in spec.required]


def apply_overrides(resolved: dict, overrides: list[str]) -> dict:
    """``key=value`` with dotted keys (``protocol.iterations=100``); values parsed as YAML."""
    valid = overridable(resolved["task"])
    for item in overrides:
        if "=" not in item:
            raise SuiteError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        options = key.startswith("head_options.") and "head_options.<name>" in valid
        if key not in valid and not options:
            raise SuiteError(f"unknown override key {key!r}; valid keys: {', '.join(valid)}")
        node = resolved
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = parse_value(item, raw, SuiteError)
    return resolved


def resolve_suite(name: str, *, scale: str | None = None, overrides=()) -> dict:
    """Suite + scale + overrides, validated again, with ``scale`` and ``overrides`` kept."""
    suite = load_suite(name)
    resolved = copy.deepcopy({k: v for k, v in suite.items() if k != "scales"})
    if "eval" in TASKS[suite["task"]].cited:
        resolved.setdefault("eval", {"mode": "whole"})
    resolved.setdefault("finetune", False)
    if scale:
        scales = suite.get("scales", {})
        if scale not in scales:
            raise SuiteError(f"suite {name} has no scale {scale!r}; known: {sorted(scales)}")
        resolved["protocol"].update(copy.deepcopy(scales[scale].get("protocol", {})))
        if "eval" in resolved:
            resolved["eval"].update(copy.deepcopy(scales[scale].get("eval", {})))
        if "head_options" in scales[scale]:
            resolved.setdefault("head_options", {}).update(
                copy.deepcopy(scales[scale]["head_options"]))
    apply_overrides(resolved, list(overrides))
    validate_suite(resolved, where=f"{name} (resolved)")
    resolved["scale"] = scale or "paper"
    resolved["overrides"] = list(overrides)
    return resolved


def suite_hash(resolved: dict) -> str:
    """Hash of what determines results (not the prose: description and sources)."""
    keep = {k: v for k, v in resolved.items() if k not in ("description", "source")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]
