"""Class tables of the datasets we read.

Cityscapes ids come from cityscapesscripts' own label table, never from a hand copy.
Class names use underscores (``traffic_light``), as in ``results/published``.
"""
from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CITYSCAPES_LABELS

IGNORE_INDEX = 255


def _cityscapes_train_labels():
    train = [lab for lab in _CITYSCAPES_LABELS if 0 <= lab.trainId < IGNORE_INDEX]
    return sorted(train, key=lambda lab: lab.trainId)


CITYSCAPES_CLASSES: tuple[str, ...] = tuple(
    lab.name.replace(" ", "_") for lab in _cityscapes_train_labels())
"""The 19 Cityscapes train classes, index = train id. BDD100K sem_seg uses the same ids."""

CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    tuple(lab.color) for lab in _cityscapes_train_labels())
"""The RGB colour of each train id, from cityscapesscripts (BDD100K draws the same)."""


def cityscapes_label_to_train_lut() -> np.ndarray:
    """uint8[256] lookup table: Cityscapes label id -> train id (255 for ignored ids)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lab in _CITYSCAPES_LABELS:
        if 0 <= lab.id < 256 and 0 <= lab.trainId < IGNORE_INDEX:
            lut[lab.id] = lab.trainId
    return lut


def cityscapes_train_to_label_ids() -> np.ndarray:
    """uint8[256] lookup table: train id -> Cityscapes label id (255 -> 0 'unlabeled')."""
    lut = np.zeros(256, dtype=np.uint8)
    for lab in _cityscapes_train_labels():
        lut[lab.trainId] = lab.id
    return lut


CITYSCAPES_INSTANCE_TRAIN_IDS: frozenset[int] = frozenset(
    lab.trainId for lab in _cityscapes_train_labels() if lab.hasInstances)

BDD100K_DET_CLASSES: tuple[str, ...] = (
    "pedestrian", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle", "traffic light", "traffic sign",
)
"""The 10 BDD100K detection classes (det_20), COCO category id = index + 1."""

BDD100K_DET_IGNORED: dict[str, str] = {
    "other person": "pedestrian",
    "other vehicle": "car",
    "trailer": "truck",
}
"""Uncertain BDD100K categories: evaluated as ignore regions of the mapped class, as the
official BDD100K toolkit does when converting to COCO."""

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest_of_drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool_table", "pillow", "screen_door",
    "stairway", "river", "bridge", "bookcase", "blind", "coffee_table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen_island", "computer",
    "swivel_chair", "boat", "bar", "arcade_machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television_receiver",
    "airplane", "dirt_track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer_belt",
    "canopy", "washer", "plaything", "swimming_pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade_name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic_light", "tray", "ashcan",
    "fan", "pier", "crt_screen", "plate", "monitor", "bulletin_board", "shower", "radiator",
    "glass", "clock", "flag",
)
"""ADE20K SceneParsing 150 classes (objectInfo150 order). In annotation PNGs class k is
stored as k + 1 and 0 means 'other'; reduce-zero-label maps v -> v - 1 and 0 -> 255."""

assert len(CITYSCAPES_CLASSES) == 19 and len(ADE20K_CLASSES) == 150


def ade20k_reduce_zero_label_lut() -> np.ndarray:
    """uint8[256]: ADE20K annotation value -> class index (0 'other' -> 255)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[1:151] = np.arange(150, dtype=np.uint8)
    return lut
