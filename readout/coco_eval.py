"""COCO box metrics through pycocotools' COCOeval (not a re-implementation): mAP over IoU
.50:.95, AP50, AP75, AP small / medium / large and per-class AP, all in percent; NaN where
COCOeval has nothing to average (e.g. no small objects), where it reports -1."""
from __future__ import annotations

import contextlib
import copy
import io
import math

import numpy as np

SUMMARY = ("mAP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]


def to_coco_results(image_id: int, boxes, labels, scores) -> list[dict]:
    """Detections of one image (boxes [N, 4] as continuous x1, y1, x2, y2; labels are COCO
    category ids) -> COCO result entries with ``bbox`` = [x, y, width, height]."""
    out = []
    for (x1, y1, x2, y2), label, score in zip(np.asarray(boxes, np.float64).tolist(),
                                              np.asarray(labels).tolist(),
                                              np.asarray(scores, np.float64).tolist()):
        out.append({"image_id": int(image_id), "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return out


def coco_metrics(ground_truth: dict, results: list[dict]) -> dict:
    """Evaluate `results` against a COCO dataset dict (images, annotations with iscrowd,
    categories). Returns the SUMMARY keys and ``AP``: per-category AP in category order."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        if results:
            dt = gt.loadRes(copy.deepcopy(results))
        else:  # loadRes cannot take an empty list; no detections still scores 0
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "annotations": [],
                          "categories": gt.dataset["categories"]}
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics = {k: _percent(v) for k, v in zip(SUMMARY, ev.stats[:6])}
    precision = ev.eval["precision"]  # [IoU T, recall R, category K, area A, maxDets M]
    per_class = []
    for k in range(precision.shape[2]):
        p = precision[:, :, k, 0, -1]  # all areas, 100 detections
        p = p[p > -1]
        per_class.append(_percent(p.mean()) if p.size else math.nan)
    metrics["AP"] = per_class
    return metrics


def _percent(value: float) -> float:
    return math.nan if value < 0 else round(float(value) * 100, 4)
