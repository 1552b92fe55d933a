import json

import cv2
import numpy as np
import pytest

from readout.datasets.bdd100k import det_to_coco, load_det_frames
from readout.datasets.classes import BDD100K_DET_CLASSES


def _write(tmp_path, frames, name="det_val.json"):
    path = tmp_path / name
    path.write_text(json.dumps(frames) if not isinstance(frames, str) else frames)
    return path


def _box(x1, y1, x2, y2):
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y2}


FRAMES = [
    {"name": "a.jpg", "labels": [
        {"id": "1", "category": "car", "box2d": _box(10, 20, 19, 29)},
        {"id": "2", "category": "other vehicle", "box2d": _box(100, 100, 150, 140)},
        {"id": "3", "category": "pedestrian", "attributes": {"crowd": True},
         "box2d": _box(0, 0, 5, 5)},
        {"id": "4", "category": "truck", "box2d": _box(1270, 700, 1300, 730)},  # partly out
        {"id": "5", "category": "bus", "box2d": _box(1300, 10, 1400, 50)},  # fully out
        {"id": "6", "category": "drivable area", "poly2d": []},
        {"id": "7", "category": "traffic light", "box2d": _box(5, 5, 7, 15)},
    ]},
    {"name": "empty.jpg", "labels": []},
    {"name": "nolabels.jpg"},
]



def test_det_to_coco_fixture(tmp_path):
    coco = det_to_coco(_write(tmp_path, FRAMES))
    assert [c["name"] for c in coco["categories"]] == list(BDD100K_DET_CLASSES)
    assert [im["file_name"] for im in coco["images"]] == ["a.jpg", "empty.jpg", "nolabels.jpg"]
    anns = {a["id"]: a for a in coco["annotations"]}
    assert len(anns) == 5 and coco["info"]["dropped_outside_image"] == 1
    car, other, crowd, truck, light = (anns[i] for i in range(1, 6))
    assert car["bbox"] == [10, 20, 10, 10] and car["area"] == 100 and car["iscrowd"] == 0
    assert car["category_id"] == BDD100K_DET_CLASSES.index("car") + 1
    assert other["category_id"] == car["category_id"] and other["iscrowd"] == 1
    assert crowd["iscrowd"] == 1 and crowd["category_id"] == 1
    assert truck["bbox"] == [1270, 700, 10, 20]  # clipped to the 1280x720 image
    assert light["category_id"] == BDD100K_DET_CLASSES.index("traffic light") + 1


def test_image_sizes_come_from_the_images(tmp_path):
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.jpg"), np.zeros((40, 60, 3), np.uint8))
    path = _write(tmp_path, [{"name": "a.jpg", "labels": [
        {"category": "car", "box2d": _box(50, 30, 70, 50)}]}])
    coco = det_to_coco(path, tmp_path / "img")
    assert coco["images"][0]["width"] == 60 and coco["images"][0]["height"] == 40
    assert coco["annotations"][0]["bbox"] == [50, 30, 10, 10]


def test_ground_truth_as_detections_gives_full_map_in_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    frames = [{"name": f"{i}.jpg", "labels": [
        {"category": c, "box2d": _box(10 + 40 * k, 10 + i, 40 + 40 * k, 60 + 2 * k)}
        for k, c in enumerate(BDD100K_DET_CLASSES)]} for i in range(3)]
    coco = det_to_coco(_write(tmp_path, frames))
    gt = COCO()
    gt.dataset = coco
    gt.createIndex()
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0} for a in coco["annotations"]]
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"name": "a.jpg"}), "JSON list"),
    (json.dumps([{"labels": []}]), "frame 0"),
    (json.dumps([{"name": "a.jpg", "labels": [{"box2d": _box(0, 0, 1, 1)}]}]), "category"),
    (json.dumps([{"name": "a.jpg", "labels": [{"category": "car", "box2d": {"x1": 0}}]}]),
     "x1,y1,x2,y2"),
    (json.dumps([{"name": "a.jpg", "labels": [{"category": "tank", "box2d": _box(0, 0, 1, 1)}]}]),
     "unknown category 'tank'"),
])
def test_bad_annotation_files_name_the_file(tmp_path, content, match):
    path = _write(tmp_path, content, name="broken.json")
    with pytest.raises(ValueError, match=match) as e:
        det_to_coco(path)
    assert "broken.json" in str(e.value)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="det_train.json"):
        load_det_frames(tmp_path / "det_train.json")
