"""BDD100K: 10k semantic segmentation (train ids, 255 ignore) and det_20 detection.

Detection labels convert to COCO (for pycocotools) the way the official BDD100K toolkit
does: boxes are inclusive pixel coordinates (COCO width = x2 - x1 + 1); 'other person',
'other vehicle' and 'trailer' become ignore regions (iscrowd=1) of pedestrian, car and
truck; boxes are clipped to the image and dropped when nothing is left.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .base import (LayoutError, SegmentationDataset, image_size, read_rgb,
                   register_dataset, resolve_dataset_root)
from .classes import (BDD100K_DET_CLASSES, BDD100K_DET_IGNORED, CITYSCAPES_CLASSES,
                      CITYSCAPES_PALETTE)

_ALIASES = {"person": "pedestrian", "bike": "bicycle", "motor": "motorcycle"}
_NOT_BOXES = {"lane", "drivable area"}  # polygon classes of the old 100k label files
BDD100K_SIZE = (1280, 720)


@register_dataset("bdd100k")
class BDD100KSemSeg(SegmentationDataset):
    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE
    dirname = "bdd100k"
    splits = ("train", "val")
    markers = ("images", "labels")
    tree = """bdd100k/
  images/10k/{train,val}/<name>.jpg
  labels/sem_seg/masks/{train,val}/<name>.png      (train ids 0-18, 255 = ignore)"""


    def _split_dirs(self, split):
        return [self.root / "images" / "10k" / split,
                self.root / "labels" / "sem_seg" / "masks" / split]

    def _pairs(self, split):
        images = sorted((self.root / "images" / "10k" / split).glob("*.jpg"))
        masks = self.root / "labels" / "sem_seg" / "masks" / split
        return self._match(images, lambda img: masks / f"{img.stem}.png")

    def _to_train_ids(self, label: np.ndarray) -> np.ndarray:
        label = label.astype(np.uint8, copy=False)
        return np.where(label < len(CITYSCAPES_CLASSES), label, 255).astype(np.uint8)


def _frame_error(path, index, frame, why: str) -> ValueError:
    name = frame.get("name", "?") if isinstance(frame, dict) else "?"
    return ValueError(f"{path}: frame {index} ({name}): {why}")


def load_det_frames(path: str | Path) -> list[dict]:
    """Read and check a BDD100K det_20 JSON (a list of frames with 'name' and 'labels')."""
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"missing detection label file {path}")
    try:
        frames = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(frames, list):
        raise ValueError(f"{path}: expected a JSON list of frames, got {type(frames).__name__}")
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict) or not isinstance(frame.get("name"), str):
            raise _frame_error(path, i, frame, "every frame needs a string 'name'")
        labels = frame.get("labels") or []
        if not isinstance(labels, list):
            raise _frame_error(path, i, frame, "'labels' must be a list")
        for lab in labels:
            if not isinstance(lab, dict) or "category" not in lab:
                raise _frame_error(path, i, frame, f"label without 'category': {lab!r}")
            box = lab.get("box2d")
            if box is not None and not all(
                    isinstance(box.get(k), (int, float)) for k in ("x1", "y1", "x2", "y2")):
                raise _frame_error(path, i, frame, f"box2d needs numeric x1,y1,x2,y2: {box!r}")
    return frames


def det_to_coco(path: str | Path, image_dir: str | Path | None = None,
                default_size: tuple[int, int] = BDD100K_SIZE) -> dict:
    """Convert a det_20 JSON into a COCO detection dict (category id = index + 1).

    Image sizes are read from `image_dir` when given (needed for synthetic or resized
    data), else taken as `default_size` (BDD100K's 1280x720).
    """
    path = Path(path)
    frames = load_det_frames(path)
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(BDD100K_DET_CLASSES)]
    cat_id = {c: i + 1 for i, c in enumerate(BDD100K_DET_CLASSES)}
    images, annotations = [], []
    dropped = 0
    for i, frame in enumerate(frames):
        if image_dir is not None:
            img_path = Path(image_dir) / frame["name"]
            if not img_path.is_file():
                raise LayoutError(f"{path}: frame {i} names image {img_path}, which is missing")
            width, height = image_size(img_path)
        else:
            width, height = default_size
        image_id = i + 1
        images.append({"id": image_id, "file_name": frame["name"], "width": width,
                       "height": height})
        for lab in frame.get("labels") or []:
            category = _ALIASES.get(lab["category"], lab["category"])
            box = lab.get("box2d")
            if box is None:
                if category in _NOT_BOXES or "poly2d" in lab:
                    continue
                raise _frame_error(path, i, frame, f"{category!r} label has no box2d")
            ignore = category in BDD100K_DET_IGNORED
            category = BDD100K_DET_IGNORED.get(category, category)
            if category not in cat_id:
                raise _frame_error(path, i, frame, f"unknown category {lab['category']!r}; "
                                   f"known: {', '.join(BDD100K_DET_CLASSES)}")
            x1, y1 = max(float(box["x1"]), 0.0), max(float(box["y1"]), 0.0)
            x2, y2 = min(float(box["x2"]), width - 1.0), min(float(box["y2"]), height - 1.0)
            w, h = x2 - x1 + 1, y2 - y1 + 1
            if w <= 0 or h <= 0:
                dropped += 1
                continue
            crowd = bool((lab.get("attributes") or {}).get("crowd", False)) or ignore
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": cat_id[category], "bbox": [x1, y1, w, h],
                                "area": w * h, "iscrowd": int(crowd), "ignore": int(crowd)})
    return {"images": images, "annotations": annotations, "categories": categories,
            "info": {"source": str(path), "dropped_outside_image": dropped}}


@register_dataset("bdd100k_det")
class BDD100KDetection:
    """BDD100K detection: images/100k/<split> with labels/det_20/det_<split>.json.

    Items: ``image`` (uint8 RGB), ``boxes`` float32[N, 4] (x1, y1, x2, y2, continuous
    coordinates: inclusive pixel box + 1 on the far side), ``labels`` int64[N] (1-10),
    ``iscrowd`` int64[N], ``image_id``, ``name``.
    """

    classes = BDD100K_DET_CLASSES
    dirname = "bdd100k"
    splits = ("train", "val")
    markers = ("images", "labels")
    tree = """bdd100k/
  images/100k/{train,val}/<name>.jpg
  labels/det_20/det_{train,val}.json      (BDD100K det_20 format)"""

    def __init__(self, root=None, split: str = "train", skip_bad: bool = False,
                 check: str = "header", progress: bool = False):
        """Images are decoded when read (a bad one fails naming its file); `skip_bad`,
        `check` and `progress` are accepted for the common dataset signature."""
        if split not in self.splits:
            raise ValueError(f"{self.name}: unknown split {split!r}; known splits: "
                             f"{', '.join(self.splits)}")
        self.split = split
        self.root = resolve_dataset_root(root, name=self.name, dirname=self.dirname,
                                         markers=self.markers, tree=self.tree)
        self.image_dir = self.root / "images" / "100k" / split
        self.label_file = self.root / "labels" / "det_20" / f"det_{split}.json"
        for p in (self.image_dir, self.label_file):
            if not p.exists():
                raise LayoutError(f"{self.name}: missing {p}\nExpected layout under "
                                  f"{self.root}:\n{self.tree}")
        self.coco = det_to_coco(self.label_file, self.image_dir)
        self._by_image: dict[int, list[dict]] = {im["id"]: [] for im in self.coco["images"]}
        for ann in self.coco["annotations"]:
            self._by_image[ann["image_id"]].append(ann)
        self.skipped: list = []

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.coco["images"])

    def annotations(self, index: int) -> list[dict]:
        """The COCO annotations of image `index` (no image read)."""
        return self._by_image[self.coco["images"][index]["id"]]

    def __getitem__(self, index: int) -> dict:
        info = self.coco["images"][index]
        image = read_rgb(self.image_dir / info["file_name"])
        anns = self.annotations(index)
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                           a["bbox"][1] + a["bbox"][3]] for a in anns],
                         np.float32).reshape(-1, 4)
        return {"image": image, "boxes": boxes,
                "labels": np.array([a["category_id"] for a in anns], np.int64),
                "iscrowd": np.array([a["iscrowd"] for a in anns], np.int64),
                "image_id": info["id"], "name": Path(info["file_name"]).stem}

    def validate(self) -> list:
        return []
