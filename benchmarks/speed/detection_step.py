"""Benchmark (not a test): seconds per training iteration and per evaluated image of every
registered detection readout, on random images with random boxes, through the same
``training_losses`` / SGD step / forward the readout loop uses.

    python -m benchmarks.speed.detection_step --arch resnet18 --size 72 128 --batch 2
    python -m benchmarks.speed.detection_step --arch resnet50 --size 720 1280 --steps 1
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from benchmarks.speed import add_threads_argument, apply_threads, timed_training_step
from readout.backbone import scratch_checkpoint
from readout.detection import DETECTORS, build_detection_model


def random_batch(batch: int, size, rng: np.random.Generator, boxes_per_image: int = 8):
    h, w = size
    images, targets = [], []
    for _ in range(batch):
        xy = rng.uniform(0, 1, (boxes_per_image, 2)) * (w * 0.8, h * 0.8)
        wh = rng.uniform(0.05, 0.2, (boxes_per_image, 2)) * (w, h)
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        images.append(torch.randn(3, h, w))
        targets.append({"boxes": torch.from_numpy(boxes),
                        "labels": torch.from_numpy(rng.integers(1, 11, boxes_per_image))})
    return tuple(images), tuple(targets)


def time_detector(name: str, *, arch: str, size, batch: int, steps: int, device: str) -> dict:
    model = build_detection_model(scratch_checkpoint(arch), name, 10, log=lambda *_: None)
    model.to(device).train()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9)
    rng = np.random.default_rng(0)
    times = []
    for step in range(steps + 1):  # the first step is warm-up, not timed
        data = random_batch(batch, size, rng)
        seconds = timed_training_step(lambda: model.training_losses(model, data, device),
                                      opt, device)
        if step:
            times.append(seconds)
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        model([data[0][0].to(device)])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        infer = time.perf_counter() - t0
    return {"detector": name, "arch": arch, "size": list(size), "batch": batch,
            "s_per_iteration": round(float(np.median(times)), 3),
            "s_per_eval_image": round(infer, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, nargs=2, default=(72, 128), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--detectors", nargs="*", default=sorted(DETECTORS))
    add_threads_argument(ap)
    args = ap.parse_args(argv)
    print(f"# {platform.node()}, torch {torch.__version__}, {apply_threads(args)}")
    for name in args.detectors:
        print(json.dumps(time_detector(name, arch=args.arch, size=args.size, batch=args.batch,
                                       steps=args.steps, device=args.device)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
