import json

import cv2
import numpy as np
import pytest

from readout.datasets import (DATASETS, CorruptFileError, LayoutError, build_dataset,
                              get_dataset_class)
from readout.datasets.classes import (ADE20K_CLASSES, CITYSCAPES_CLASSES,
                                      cityscapes_label_to_train_lut)


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("split", ["train", "val"])
def test_every_loader_reads_the_synthetic_layout(name, split, tiny_root):
    ds = build_dataset(name, tiny_root, split)
    assert len(ds) > 0
    item = ds[0]
    assert item["image"].dtype == np.uint8 and item["image"].ndim == 3
    if "label" in item:
        assert item["label"].shape == item["image"].shape[:2]
        values = np.unique(item["label"])
        assert ((values < ds.num_classes) | (values == 255)).all()
        assert (values < ds.num_classes).any()
    else:
        assert item["boxes"].shape[1] == 4 and len(item["boxes"]) == len(item["labels"])


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_root_may_be_the_data_root_or_the_dataset_folder(name, tiny_root):
    via_parent = build_dataset(name, tiny_root, "val")
    direct = build_dataset(name, via_parent.root, "val")
    assert len(direct) == len(via_parent) and direct.root == via_parent.root


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_missing_root_names_it_and_shows_the_tree(name, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(LayoutError) as e:
        build_dataset(name, missing, "train")
    assert str(missing) in str(e.value)
    assert get_dataset_class(name).tree.splitlines()[1].strip() in str(e.value)


def test_root_from_environment(tiny_root, monkeypatch):
    monkeypatch.setenv("BENCH_DATA", str(tiny_root))
    assert len(build_dataset("cityscapes", None, "val")) > 0
    monkeypatch.delenv("BENCH_DATA")
    with pytest.raises(LayoutError, match="BENCH_DATA"):
        build_dataset("cityscapes", None, "val")


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(KeyError) as e:
        build_dataset("kitti", "/tmp", "train")
    for name in DATASETS:
        assert name in str(e.value)


def test_unknown_split_is_an_error(tiny_root):
    with pytest.raises(ValueError, match="train, val"):
        build_dataset("ade20k", tiny_root, "test")


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _cityscapes_fixture(root, label_ids, size=(8, 16)):
    stem = "aachen_000000_000019"
    img = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    _png(root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png", img)
    _png(root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png", label_ids)


def test_cityscapes_hand_made_fixture_maps_label_ids_to_train_ids(tmp_path):
    ids = np.array([[7, 8, 26, 0, 1, 33, 24, 23] * 2] * 8, np.uint8)
    _cityscapes_fixture(tmp_path, ids)
    ds = build_dataset("cityscapes", tmp_path, "train")
    item = ds[0]
    assert item["name"] == "aachen_000000_000019_leftImg8bit"
    expected = {7: 0, 8: 1, 26: 13, 0: 255, 1: 255, 33: 18, 24: 11, 23: 10}
    for label_id, train_id in expected.items():
        assert (item["label"][ids == label_id] == train_id).all()


def test_cityscapes_lut_follows_cityscapesscripts():
    from cityscapesscripts.helpers.labels import id2label
    lut = cityscapes_label_to_train_lut()
    for label_id, lab in id2label.items():
        if 0 <= label_id < 256:
            want = lab.trainId if 0 <= lab.trainId < 255 else 255
            assert lut[label_id] == want, lab.name
    assert CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[18] == "bicycle"


def test_bdd_and_ade_hand_made_fixtures(tmp_path):
    bdd = tmp_path / "bdd100k"
    name = "7d2f7975-e0c1c5a7"
    _png(bdd / "images" / "10k" / "train" / f"{name}.jpg", np.zeros((6, 10, 3), np.uint8))
    mask = np.array([[0, 18, 255, 19, 200] * 2] * 6, np.uint8)
    _png(bdd / "labels" / "sem_seg" / "masks" / "train" / f"{name}.png", mask)
    item = build_dataset("bdd100k", tmp_path, "train")[0]
    assert item["label"][0].tolist() == [0, 18, 255, 255, 255] * 2

    ade = tmp_path / "ade20k" / "ADEChallengeData2016"
    _png(ade / "images" / "training" / "ADE_train_00000001.jpg", np.zeros((4, 6, 3), np.uint8))
    ann = np.array([[0, 1, 2, 150, 151, 3]] * 4, np.uint8)
    _png(ade / "annotations" / "training" / "ADE_train_00000001.png", ann)
    item = build_dataset("ade20k", tmp_path, "train")[0]
    assert item["label"][0].tolist() == [255, 0, 1, 149, 255, 2]
    assert ADE20K_CLASSES[0] == "wall" and ADE20K_CLASSES[149] == "flag"


def test_missing_split_folder_is_named(tmp_path):
    _cityscapes_fixture(tmp_path, np.full((8, 16), 7, np.uint8))
    with pytest.raises(LayoutError) as e:
        build_dataset("cityscapes", tmp_path, "val")
    assert str(tmp_path / "leftImg8bit" / "val") in str(e.value)
    assert "gtFine_labelIds.png" in str(e.value)


def test_missing_label_fails_or_is_skipped(tmp_path):
    _cityscapes_fixture(tmp_path, np.full((8, 16), 7, np.uint8))
    extra = tmp_path / "leftImg8bit" / "train" / "aachen" / "aachen_000001_000019_leftImg8bit.png"
    _png(extra, np.zeros((8, 16, 3), np.uint8))
    with pytest.raises(LayoutError, match="aachen_000001_000019_gtFine_labelIds.png"):
        build_dataset("cityscapes", tmp_path, "train")
    ds = build_dataset("cityscapes", tmp_path, "train", skip_bad=True)
    assert len(ds) == 1 and [p.kind for p in ds.skipped] == ["missing_label"]


def test_size_mismatch_fails_before_any_read_naming_both_files(tmp_path):
    _cityscapes_fixture(tmp_path, np.full((4, 16), 7, np.uint8))  # label shorter than image
    with pytest.raises(LayoutError) as e:
        build_dataset("cityscapes", tmp_path, "train")
    assert "[size_mismatch]" in str(e.value) and "--skip-bad" in str(e.value)
    assert "leftImg8bit.png" in str(e.value) and "gtFine_labelIds.png" in str(e.value)
    skipping = build_dataset("cityscapes", tmp_path, "train", skip_bad=True)
    assert len(skipping) == 0 and skipping.skipped[0].kind == "size_mismatch"
    assert skipping.validate() == []


def test_a_truncated_label_is_found_by_decoding_and_named_when_read(tmp_path):
    _cityscapes_fixture(tmp_path, np.full((8, 16), 7, np.uint8))
    (label,) = (tmp_path / "gtFine" / "train").rglob("*_labelIds.png")
    data = label.read_bytes()
    label.write_bytes(data[: len(data) - 20])  # the header survives, the data do not
    ds = build_dataset("cityscapes", tmp_path, "train")  # headers alone look fine
    with pytest.raises(CorruptFileError, match=f"cannot decode label {label}.*bench data check"):
        ds[0]
    with pytest.raises(LayoutError, match="\\[corrupt\\].*does not decode"):
        build_dataset("cityscapes", tmp_path, "train", check="decode")
    checked = build_dataset("cityscapes", tmp_path, "train", check="decode", skip_bad=True)
    assert len(checked) == 0 and checked.skipped[0].kind == "corrupt"


def test_detection_loader_boxes_are_continuous_xyxy(tmp_path):
    bdd = tmp_path / "bdd100k"
    _png(bdd / "images" / "100k" / "train" / "a.jpg", np.zeros((20, 30, 3), np.uint8))
    frames = [{"name": "a.jpg", "labels": [
        {"id": "1", "category": "car", "box2d": {"x1": 2, "y1": 3, "x2": 11, "y2": 7}}]}]
    (bdd / "labels" / "det_20").mkdir(parents=True)
    (bdd / "labels" / "det_20" / "det_train.json").write_text(json.dumps(frames))
    item = build_dataset("bdd100k_det", tmp_path, "train")[0]
    assert item["boxes"].tolist() == [[2, 3, 12, 8]] and item["labels"].tolist() == [3]
