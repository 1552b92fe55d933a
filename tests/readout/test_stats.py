from pathlib import Path

import numpy as np
import pytest

from readout.datasets.stats import (class_groups, class_statistics, read_stats_csv,
                                    write_stats_csv)

PUBLISHED = Path(__file__).resolve().parents[2] / "results" / "published"


def _fixture():
    """10 label maps of 10x10 px with known class shares (255 = ignore)."""
    maps = []
    for i in range(10):
        lab = np.full((10, 10), 255, np.uint8)
        lab.flat[:50] = 0  # class 0: 50 % of every image
        if i == 0:
            lab.flat[50:52] = 1  # class 1: 2 % of one image
        if i < 5:
            lab.flat[60] = 2  # class 2: 1 % of half the images
        if i < 3:
            lab.flat[70:80] = 3  # class 3: 10 % of 3 images (30 % -> common)
        maps.append(lab)
    return maps


def test_statistics_on_known_shares():
    stats = class_statistics(_fixture(), ("a", "b", "c", "d", "e"))
    got = {s.name: (s.avg_pixel_pct_per_image, s.total_pixel_pct, s.total_image_pct,
                    s.size_group, s.freq_group) for s in stats}
    assert got["a"] == pytest.approx((50.0, 50.0, 100.0, "L", "C"))
    assert got["b"] == pytest.approx((2.0, 0.2, 10.0, "L", "R"))
    assert got["c"] == pytest.approx((1.0, 0.5, 50.0, "S", "C"))  # 1 % is not > 1 %
    assert got["d"] == pytest.approx((10.0, 3.0, 30.0, "L", "C"))
    assert got["e"] == pytest.approx((0.0, 0.0, 0.0, "S", "R"))
    groups = class_groups(stats)
    assert groups == {"small": ["c", "e"], "large": ["a", "b", "d"], "rare": ["b", "e"],
                      "common": ["a", "c", "d"]}


def test_csv_round_trip_has_the_published_columns(tmp_path):
    stats = class_statistics(_fixture(), ("a", "b", "c", "d", "e"))
    write_stats_csv(stats, tmp_path / "s.csv", decimals=4)
    header = (tmp_path / "s.csv").read_text().splitlines()[0]
    assert header == (PUBLISHED / "bdd100k_class_stats.csv").read_text().splitlines()[0]
    again = {s.name: s for s in read_stats_csv(tmp_path / "s.csv")}
    assert again["b"].total_pixel_pct == pytest.approx(0.2)


def test_group_rules_reproduce_the_published_bdd100k_groups():
    import csv
    with (PUBLISHED / "bdd100k_class_stats.csv").open() as f:
        printed = {r["class"]: (r["size_group"], r["freq_group"]) for r in csv.DictReader(f)}
    ours = {s.name: (s.size_group, s.freq_group)
            for s in read_stats_csv(PUBLISHED / "bdd100k_class_stats.csv")}
    assert len(printed) == 19 and ours == printed


def test_published_table_is_consistent_with_our_average_definition():
    """avg share over images containing the class = total share / image share."""
    for s in read_stats_csv(PUBLISHED / "bdd100k_class_stats.csv"):
        if s.total_pixel_pct >= 1.0:  # enough printed digits to compare
            implied = 100 * s.total_pixel_pct / s.total_image_pct
            assert implied == pytest.approx(s.avg_pixel_pct_per_image, rel=0.12), s.name


def test_no_labels_is_an_error():
    with pytest.raises(ValueError):
        class_statistics([], ("a",))
