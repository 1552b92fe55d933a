"""Benchmark (not a test): pretraining throughput of every flow method, split into its three
parts, on random frames through the loop's own pieces:

- ``flow``: forward + backward flow of a batch of frame pairs (RAFT on the device);
- ``views``: the method's ``make_views`` (crops, affine, colour, view flow, subcrops; CPU);
- ``step``: forward + backward + optimizer step + the method's hooks (EMA, queue; bf16
  autocast on CUDA), with its FLOPs counted by ``torch.utils.flop_counter`` and
  MFU = FLOPs / time / peak.

    python -m benchmarks.speed.pretrain_step --device cuda --out pretrain_speed.json
    python -m benchmarks.speed.pretrain_step --arch resnet18 --size 48 96 --batch 2 \\
        --frame 72 128 --preset smoke --flow dis      # CPU smoke check
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.speed import add_threads_argument, apply_threads
from pretrain.config import load_preset
from pretrain.flow import ESTIMATORS, get_estimator
from pretrain.methods import get_method_class
from pretrain.methods.base import StepContext
from core.runtime import autocast
from pretrain.train import PretrainSchedule, _flows, make_optimizer

H100_BF16_DENSE_TFLOPS = 989.0  # H100 SXM, dense bf16 tensor cores (NVIDIA data sheet)
ESTIMATORS_ON_RANDOM_FRAMES = tuple(sorted(set(ESTIMATORS) - {"gt"}))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, repeats: int):
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def measure(name: str, *, preset: str, arch: str, size, frame, batch: int, steps: int,
            device: torch.device, flow: str, peak_tflops: float) -> dict:
    config = load_preset(name, preset)
    model_kw = {**config["model"], "arch": arch, "view_size": list(size)}
    method = get_method_class(name)(**model_kw).to(device).train()
    s = config["schedule"]
    schedule = PretrainSchedule(steps=1000, batch_size=batch, optimizer=s["optimizer"],
                                lr=s["lr"], weight_decay=s["weight_decay"])
    optimizer = make_optimizer(method.trainable_named_parameters(), schedule)
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(batch, 2, 3, *frame, generator=g)  # a batch of frame pairs
    estimator = get_estimator(flow, **({"weights": None} if flow.startswith("raft") else {}))
    sample = {"frames": frames.to(device), "videos": [""] * batch,
              "frame_index": [[0, 1]] * batch}

    t_flow, (fwd, bwd) = _timed(lambda: _flows(sample, estimator), device, steps)
    rngs = [np.random.default_rng([0, n]) for n in range(batch)]
    flows = {"flow_fwd": fwd, "flow_bwd": bwd} if method.needs_flow else {}
    t_views, views = _timed(lambda: method.make_views(frames, rngs, **flows), device, steps)
    views = {k: v.to(device) if torch.is_tensor(v) else v for k, v in views.items()}

    def run_step():
        ctx = StepContext(step=0, total=schedule.steps, seed=0)
        method.before_step(ctx)
        with autocast(device):
            loss = sum(method(views).values()).float()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step(ctx)
        return loss

    t_step, _ = _timed(run_step, device, steps)
    with FlopCounterMode(display=False) as counter:
        run_step()
    flops = counter.get_total_flops()
    return {"method": name, "arch": arch, "view_size": list(size), "frame_size": list(frame),
            "batch": batch, "device": str(device), "flow": flow,
            "autocast": "bf16" if device.type == "cuda" else "fp32",
            "pairs_per_s": {"flow": round(batch / t_flow, 2), "views": round(batch / t_views, 2),
                            "step": round(batch / t_step, 2),
                            "all": round(batch / (t_flow + t_views + t_step), 2)},
            "step_tflops": round(flops / 1e12, 3),
            "mfu": round(flops / t_step / (peak_tflops * 1e12), 4) if device.type == "cuda"
            else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="*", default=["poodle", "flowe"])
    ap.add_argument("--preset", default="paper", choices=("paper", "smoke"),
                    help="heads and augmentation parameters of this preset")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    ap.add_argument("--frame", type=int, nargs=2, default=(720, 1280), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=4, help="pairs per step (PooDLe: 4 per GPU)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--flow", default="raft_large", choices=ESTIMATORS_ON_RANDOM_FRAMES,
                    help="the estimator timed on random frames (not gt: it reads the "
                         "synthetic world's files)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    ap.add_argument("--out", default=None, help="write the results to this JSON file")
    add_threads_argument(ap)
    args = ap.parse_args(argv)
    threads = apply_threads(args)
    info = {"host": platform.node(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print(f"# {info}, {threads}")
    results = []
    for name in args.methods:
        results.append(measure(name, preset=args.preset, arch=args.arch, size=args.size,
                               frame=args.frame, batch=args.batch, steps=args.steps,
                               device=torch.device(args.device), flow=args.flow,
                               peak_tflops=args.peak_tflops))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": info, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
