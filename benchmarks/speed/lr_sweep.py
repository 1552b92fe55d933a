"""Benchmark (not a test): seconds per training iteration of a frozen-backbone readout with
1 head and with K heads of a learning-rate sweep (``protocol.lr_sweep``) on the same
forward, on random images, through the readout loop's own ``training_losses`` and
optimizer groups. The ratio is what a sweep costs over one run (issue 20: <= 1.3 for 8).

    python -m benchmarks.speed.lr_sweep --arch resnet18 --crop 64 64 --batch 2   # smoke
    python -m benchmarks.speed.lr_sweep --arch resnet50 --crop 512 1024 --batch 8 \\
        --device cuda                                          # cityscapes_linear's crop
"""
from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import torch

from benchmarks.speed import add_threads_argument, apply_threads, timed_training_step
from readout.backbone import scratch_checkpoint
from readout.model import build_segmentation_model
from readout.train import ReadoutSchedule, parameter_groups


def time_heads(heads: int, *, arch: str, head: str, crop, batch: int, steps: int,
               device: str, classes: int = 19) -> float:
    """Median seconds per iteration (the first is warm-up) with ``heads`` swept heads."""
    torch.manual_seed(0)
    lrs = tuple(0.01 * 2 ** -k for k in range(heads))
    model = build_segmentation_model(scratch_checkpoint(arch), head, classes,
                                     log=lambda *_: None, sweep_heads=heads)
    schedule = ReadoutSchedule(iterations=steps + 1, batch_size=batch, lr=lrs[0],
                               momentum=0.9, weight_decay=1e-4, flip=False,
                               checkpoint_every=steps + 1, lr_sweep=lrs)
    model.to(device).train()
    opt = torch.optim.SGD(parameter_groups(model, schedule), lr=lrs[0], momentum=0.9)
    images = torch.randn(batch, 3, *crop)
    labels = torch.randint(0, classes, (batch, *crop))
    times = []
    for step in range(steps + 1):
        seconds = timed_training_step(
            lambda: model.training_losses(model, (images, labels), device, schedule), opt,
            device)
        if step:
            times.append(seconds)
    return float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--head", default="deeplab_v1")
    ap.add_argument("--crop", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    add_threads_argument(ap)
    args = ap.parse_args(argv)
    print(f"# {platform.node()}, torch {torch.__version__}, {apply_threads(args)}")
    kw = dict(arch=args.arch, head=args.head, crop=args.crop, batch=args.batch,
              steps=args.steps, device=args.device)
    one, many = time_heads(1, **kw), time_heads(args.heads, **kw)
    print(json.dumps({**kw, "crop": list(args.crop), "heads": args.heads,
                      "s_per_iteration_1_head": round(one, 4),
                      f"s_per_iteration_{args.heads}_heads": round(many, 4),
                      "ratio": round(many / one, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
