"""The registered pretraining methods as their YAML files declare them, read without torch
(the CLI's help is built before torch is imported): each ``pretrain/configs/<method>.yaml``
names its ``method``, its display ``label`` (leaderboards, study tables), its ``order``
(where its rows go: baselines first) and its presets (a study takes every method that has
its pretraining preset). A method is its file in ``pretrain/methods/`` plus this YAML;
tests check that the two lists are the same (``pretrain.methods.METHODS``)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"
# the registered flow estimators (pretrain.flow.estimators.ESTIMATORS), for help texts
ESTIMATOR_NAMES = ("dis", "farneback", "raft_small", "raft_large", "gt")
TOP_LEVEL_KEYS = {"method", "label", "order", "presets"}


@dataclass(frozen=True)
class MethodEntry:
    name: str
    label: str
    order: int
    presets: tuple[str, ...]


@lru_cache(maxsize=1)
def method_entries() -> tuple[MethodEntry, ...]:
    """Every method YAML, in display order."""
    entries = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        missing = sorted(TOP_LEVEL_KEYS - set(doc))
        if missing:
            raise ValueError(f"{path}: missing top-level key(s) {missing}")
        if doc["method"] != path.stem:
            raise ValueError(f"{path} is for method {doc['method']!r}, not {path.stem!r}")
        entries.append(MethodEntry(doc["method"], str(doc["label"]), int(doc["order"]),
                                   tuple(doc["presets"])))
    return tuple(sorted(entries, key=lambda e: (e.order, e.name)))


def method_names() -> list[str]:
    return [e.name for e in method_entries()]


def method_label(name: str) -> str:
    """The method's display label; the name itself for names that are not methods."""
    return next((e.label for e in method_entries() if e.name == name), name)


def methods_with_preset(preset: str) -> list[str]:
    return [e.name for e in method_entries() if preset in e.presets]
