"""Per-class pixel statistics and the size / frequency class groups of PooDLe App. F.

Columns as in PooDLe Table 7 (``results/published/bdd100k_class_stats.csv``):
- avg_pixel_pct_per_image: mean pixel share of the class over the images that contain it
  (the published table satisfies avg = total / image share, e.g. road 21.3 / 0.965 = 22.1);
- total_pixel_pct: class pixels / all pixels (ignored pixels count in the denominator);
- total_image_pct: share of images where the class occurs;
- size_group: L if avg_pixel_pct_per_image > 1 %, else S;
- freq_group: C if total_image_pct > 20 %, else R.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

LARGE_ABOVE_PCT = 1.0  # PooDLe App. F: "large" = average pixel share per image > 1 %
COMMON_ABOVE_PCT = 20.0  # PooDLe App. F: "common" = present in > 20 % of images
COLUMNS = ("class", "avg_pixel_pct_per_image", "total_pixel_pct", "total_image_pct",
           "size_group", "freq_group")


@dataclass(frozen=True)
class ClassStat:
    name: str
    avg_pixel_pct_per_image: float
    total_pixel_pct: float
    total_image_pct: float

    @property
    def size_group(self) -> str:
        return "L" if self.avg_pixel_pct_per_image > LARGE_ABOVE_PCT else "S"

    @property
    def freq_group(self) -> str:
        return "C" if self.total_image_pct > COMMON_ABOVE_PCT else "R"


def class_statistics(labels: Iterable[np.ndarray], class_names: tuple[str, ...]
                     ) -> list[ClassStat]:
    """Statistics over train-id label maps (values >= len(class_names) are ignored)."""
    k = len(class_names)
    pixels = np.zeros(k, np.int64)
    present = np.zeros(k, np.int64)
    share_sum = np.zeros(k, np.float64)
    total, images = 0, 0
    for label in labels:
        label = np.asarray(label).ravel()
        counts = np.bincount(label[label < k], minlength=k)
        pixels += counts
        present += counts > 0
        share_sum += counts / label.size
        total += label.size
        images += 1
    if images == 0:
        raise ValueError("no label maps to compute statistics from")
    avg = np.divide(share_sum, present, out=np.zeros(k), where=present > 0)
    return [ClassStat(name, 100 * avg[i], 100 * pixels[i] / total, 100 * present[i] / images)
            for i, name in enumerate(class_names)]


def class_groups(stats: Iterable[ClassStat]) -> dict[str, list[str]]:
    """Class names per group: small / large / rare / common."""
    stats = list(stats)
    return {"small": [s.name for s in stats if s.size_group == "S"],
            "large": [s.name for s in stats if s.size_group == "L"],
            "rare": [s.name for s in stats if s.freq_group == "R"],
            "common": [s.name for s in stats if s.freq_group == "C"]}


def write_stats_csv(stats: Iterable[ClassStat], path: str | Path, decimals: int = 2) -> None:
    """Rows sorted by average pixel share, as PooDLe Table 7 prints them."""
    rows = sorted(stats, key=lambda s: -s.avg_pixel_pct_per_image)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for s in rows:
            w.writerow([s.name, f"{s.avg_pixel_pct_per_image:.{decimals}f}",
                        f"{s.total_pixel_pct:.{decimals}f}", f"{s.total_image_pct:.{decimals}f}",
                        s.size_group, s.freq_group])


def read_stats_csv(path: str | Path) -> list[ClassStat]:
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        return [ClassStat(r["class"], float(r["avg_pixel_pct_per_image"]),
                          float(r["total_pixel_pct"]), float(r["total_image_pct"]))
                for r in reader]
