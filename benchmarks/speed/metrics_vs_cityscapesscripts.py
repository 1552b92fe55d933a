"""Benchmark (not a test): our in-memory SegmentationMetric against the path detectron2
and mmseg take for Cityscapes (predictions written as label-id PNGs, then cityscapesScripts'
``evaluateImgLists``). Checks the numbers are identical and prints the speed ratio.

    python -m benchmarks.speed.metrics_vs_cityscapesscripts --images 10 --size 1024 2048
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.speed import add_threads_argument, apply_threads
from readout.datasets.classes import (cityscapes_label_to_train_lut,
                                      cityscapes_train_to_label_ids)
from readout.metrics import SegmentationMetric


def make_maps(n: int, size, seed: int = 0):
    """Ground truth with every Cityscapes label id and predictions ~70 % correct."""
    from cityscapesscripts.helpers.labels import labels
    rng = np.random.default_rng(seed)
    ids = np.array([lab.id for lab in labels if lab.id >= 0], np.uint8)
    to_train, to_id = cityscapes_label_to_train_lut(), cityscapes_train_to_label_ids()
    for _ in range(n):
        coarse = ids[rng.integers(0, len(ids), (size[0] // 32, size[1] // 32))]
        gt = cv2.resize(coarse, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        pred = to_train[gt].copy()
        noise = rng.uniform(size=gt.shape) < 0.3
        pred[noise] = rng.integers(0, 19, noise.sum())
        pred[pred == 255] = 0
        yield gt, pred.astype(np.uint8), to_id


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--size", type=int, nargs=2, default=(1024, 2048))
    add_threads_argument(ap)
    args = ap.parse_args(argv)
    print(f"# {apply_threads(args)}")
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev
    from cityscapesscripts.helpers.labels import labels

    to_train = cityscapes_label_to_train_lut()
    ours = SegmentationMetric(19)
    t_ours = t_write = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        preds, gts = [], []
        for i, (gt, pred, to_id) in enumerate(make_maps(args.images, args.size)):
            gp = Path(tmp) / f"gt{i}.png"
            cv2.imwrite(str(gp), gt)
            gts.append(str(gp))
            target = torch.from_numpy(to_train[gt])
            t0 = time.perf_counter()
            ours.update(torch.from_numpy(pred), target)
            t_ours += time.perf_counter() - t0
            t0 = time.perf_counter()
            pp = Path(tmp) / f"pred{i}.png"
            cv2.imwrite(str(pp), to_id[pred])
            t_write += time.perf_counter() - t0
            preds.append(str(pp))
        t0 = time.perf_counter()
        result = ours.compute()
        t_ours += time.perf_counter() - t0
        a = ev.args
        a.evalInstLevelScore, a.evalPixelAccuracy, a.JSONOutput, a.quiet = False, False, False, True
        a.evalLabels = [lab.id for lab in labels if lab.id >= 0 and not lab.ignoreInEval]
        t0 = time.perf_counter()
        ref = ev.evaluateImgLists(preds, gts, a)
        t_eval = time.perf_counter() - t0
    ref_miou = 100 * ref["averageScoreClasses"]
    diffs = [abs(100 * ref["classScores"][lab.name] - result["IoU"][lab.trainId])
             for lab in labels if 0 <= lab.trainId < 255
             and not math.isnan(ref["classScores"][lab.name])]
    identical = abs(ref_miou - result["mIoU"]) < 1e-9 and max(diffs) < 1e-9
    n = args.images
    print(f"{n} images of {args.size[0]}x{args.size[1]}")
    print(f"mIoU ours {result['mIoU']:.6f}  cityscapesScripts {ref_miou:.6f}  "
          f"max per-class |diff| {max(diffs):.2e}  identical: {identical}")
    print(f"ours (in memory)            {1000 * t_ours / n:8.1f} ms/image")
    print(f"label-id PNG writing        {1000 * t_write / n:8.1f} ms/image")
    print(f"evaluateImgLists            {1000 * t_eval / n:8.1f} ms/image")
    print(f"speed ratio (PNG + cityscapesScripts) / ours: {(t_write + t_eval) / t_ours:.1f}x")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
