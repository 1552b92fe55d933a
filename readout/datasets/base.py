"""Dataset registry and the shared machinery of the segmentation loaders.

Loaders return numpy arrays (no torch import here, so ``bench data`` stays fast); a torch
``DataLoader`` accepts them as map-style datasets.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from ..registry import Registry
from .classes import IGNORE_INDEX

DATASETS = Registry("dataset")
register_dataset = DATASETS.register
get_dataset_class = DATASETS.get_class


def build_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train",
                  **kwargs):
    """Instantiate a registered dataset; `root` defaults to $BENCH_DATA."""
    return get_dataset_class(name)(root=root, split=split, **kwargs)


class LayoutError(FileNotFoundError):
    """A dataset folder or file is missing; the message shows the expected tree."""


class PairMismatchError(ValueError):
    """An image and its label differ in size."""


class CorruptFileError(ValueError):
    """An image or label file that does not decode (truncated, not an image)."""


CHECK_HINT = "`bench data check` lists every bad file; --skip-bad leaves them out"


@dataclass(frozen=True)
class Problem:
    kind: str  # missing_label | size_mismatch | unreadable | corrupt
    message: str
    files: tuple[str, ...]

    def __str__(self) -> str:
        return f"[{self.kind}] {self.message}"


def data_root(root: str | os.PathLike | None) -> Path:
    if root is None:
        root = os.environ.get("BENCH_DATA")
        if not root:
            raise LayoutError("no dataset root given: pass --data-root/--root DIR or set "
                              "BENCH_DATA")
    return Path(root).expanduser()


def resolve_dataset_root(root, *, name: str, dirname: str, markers: tuple[str, ...],
                         tree: str) -> Path:
    """The dataset folder: `root` itself, or `root/dirname` when `root` is the data root
    that holds every dataset (``--data-root`` / ``$BENCH_DATA``)."""
    base = data_root(root)
    if not base.exists():
        raise LayoutError(f"{name}: root {base} does not exist.\nExpected layout:\n{tree}")
    if (base / dirname).is_dir() and not any((base / m).is_dir() for m in markers):
        return base / dirname
    return base


def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise CorruptFileError(f"cannot decode image {path} (truncated or not an image); "
                               f"{CHECK_HINT}")
    return np.ascontiguousarray(img[:, :, ::-1])


def read_label(path: Path) -> np.ndarray:
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise CorruptFileError(f"cannot decode label {path} (truncated or not an image); "
                               f"{CHECK_HINT}")
    if lab.ndim != 2:
        raise CorruptFileError(f"label {path} has shape {lab.shape}; expected a single "
                               f"channel; {CHECK_HINT}")
    return lab


def decode_problem(path: Path) -> str | None:
    """Why `path` does not decode completely (None when it does). Both decoders must
    accept it: PIL fails on a JPEG cut short that OpenCV passes as a partial image, OpenCV
    on a PNG without its end that PIL passes."""
    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for bad image data
        return f"{path} does not decode ({e})"
    if cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is None:
        return f"{path} does not decode (OpenCV cannot read it)"
    return None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    with Image.open(path) as im:
        return im.size


class SegmentationDataset:
    """Base of the semantic-segmentation loaders: a list of (image, label) file pairs.

    Subclasses set ``classes``, ``dirname`` and ``splits`` and implement ``_split_dirs``
    (folders that must exist), ``_pairs`` and ``_to_train_ids``.
    """

    name = "?"
    classes: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] | None = None  # RGB per class, for figures
    dirname = ""
    splits: tuple[str, ...] = ("train", "val")
    ignore_index = IGNORE_INDEX
    tree = ""
    markers: tuple[str, ...] = ()  # sub-folders that identify the dataset folder itself

    def __init__(self, root=None, split: str = "train", skip_bad: bool = False,
                 check: str = "header", progress: bool = False):
        """`check`: "header" (default) compares image and label sizes from the file headers
        (fast) before anything trains; "decode" also decodes every file (``bench data
        check``). Problems fail here, listed, unless `skip_bad`, which leaves those pairs
        out and keeps them in ``skipped``."""
        if check not in ("header", "decode"):
            raise ValueError(f"check={check!r}: 'header' or 'decode'")
        if split not in self.splits:
            raise ValueError(f"{self.name}: unknown split {split!r}; known splits: "
                             f"{', '.join(self.splits)}")
        self.split = split
        self.root = self.resolve_root(root)
        for folder in self._split_dirs(split):
            if not folder.is_dir():
                raise LayoutError(self._missing(folder))
        pairs, problems = self._pairs(split)
        problems = problems + self._file_problems(pairs, decode=check == "decode",
                                                  progress=progress)
        if skip_bad:
            bad = {p.files[0] for p in problems}
            pairs = [pr for pr in pairs if str(pr[0]) not in bad]
        elif problems:
            raise LayoutError(f"{self.name} {split}: {len(problems)} problem(s) under "
                              f"{self.root}, the first: {problems[0]}; {CHECK_HINT}")
        self.skipped: list[Problem] = problems
        self.samples: list[tuple[Path, Path]] = pairs

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def resolve_root(cls, root) -> Path:
        return resolve_dataset_root(root, name=cls.name, dirname=cls.dirname,
                                    markers=cls.markers, tree=cls.tree)

    def _missing(self, path: Path) -> str:
        return (f"{self.name}: missing folder {path}\n"
                f"Expected layout under {self.root}:\n{self.tree}")

    def _split_dirs(self, split: str) -> list[Path]:
        raise NotImplementedError

    def _pairs(self, split: str) -> tuple[list[tuple[Path, Path | None]], list[Problem]]:
        raise NotImplementedError

    def _to_train_ids(self, label: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def _match(images: list[Path], label_of: Callable[[Path], Path]):
        pairs, problems = [], []
        for img in images:
            lab = label_of(img)
            if lab.is_file():
                pairs.append((img, lab))
            else:
                pairs.append((img, None))
                problems.append(Problem("missing_label", f"no label {lab} for image {img}",
                                        (str(img), str(lab))))
        return pairs, problems

    def _file_problems(self, pairs, decode: bool = False,
                       progress: bool = False) -> list[Problem]:
        """Unreadable headers and image/label size mismatches; with `decode`, also files
        whose data do not decode to the end."""
        from tqdm import tqdm
        problems = []
        for img, lab in tqdm(pairs, desc=f"{self.name} {self.split}: checking files",
                             disable=not progress, leave=False):
            if lab is None:
                continue
            files = (str(img), str(lab))
            try:
                a, b = image_size(img), image_size(lab)
            except OSError as e:
                problems.append(Problem("unreadable", str(e), files))
                continue
            if a != b:
                problems.append(Problem(
                    "size_mismatch", f"image {img} is {a[0]}x{a[1]} but label {lab} is "
                    f"{b[0]}x{b[1]}", files))
            elif decode:
                why = decode_problem(img) or decode_problem(lab)
                if why:
                    problems.append(Problem("corrupt", why, files))
        return problems

    def validate(self) -> list[Problem]:
        """Problems of the kept samples: unreadable headers and image/label size mismatches.
        (Missing labels already failed the constructor, or were skipped with skip_bad.)"""
        return self._file_problems(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def load_label(self, index: int) -> np.ndarray:
        """Train-id label map (uint8, 255 = ignore) of sample `index`."""
        return self._to_train_ids(read_label(self.samples[index][1]))

    def __getitem__(self, index: int) -> dict:
        img_path, lab_path = self.samples[index]
        image = read_rgb(img_path)
        label = self.load_label(index)
        if image.shape[:2] != label.shape:
            raise PairMismatchError(
                f"image {img_path} is {image.shape[1]}x{image.shape[0]} but label {lab_path} "
                f"is {label.shape[1]}x{label.shape[0]} (use --skip-bad to skip such pairs)")
        return {"image": image, "label": label, "name": img_path.stem,
                "image_path": str(img_path)}
