"""Benchmark (not a test): flow pairs per second per estimator and resolution, and the flow
cache's bytes per pair against float32 with the end-point error it adds.

Frames come from the small synthetic world (288x512), resized for larger resolutions.
RAFT runs with random weights here (speed only) on CUDA when present.

    python -m benchmarks.speed.flow --sizes 288x512 720x1280 --pairs 4 --levels 1 3 6 9
"""
from __future__ import annotations

import argparse
import json
import time
from fractions import Fraction

import cv2
import numpy as np
import torch

from benchmarks.speed import add_threads_argument, apply_threads
from pretrain.flow import get_estimator
from pretrain.flow.cache import decode, encode


def frames(size, pairs: int):
    from benchmarks.synth import SyntheticWorld
    world = SyntheticWorld("small", seed=0)
    out = []
    for k in range(pairs):
        p = world.frame_pair(k % len(world.videos), 4 + k, 1)
        imgs = [cv2.resize(p[f"image{i}"], (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
                for i in (1, 2)]
        out.append(tuple(torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255
                         for x in imgs))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["288x512", "720x1280"])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--estimators", nargs="+", default=["dis", "farneback", "raft_small",
                                                        "raft_large"])
    ap.add_argument("--raft-max-side", type=int, default=512,
                    help="skip RAFT on CPU above this width (minutes per pair)")
    ap.add_argument("--steps", nargs="+", default=["1/32", "1/16", "1/8"])
    ap.add_argument("--levels", nargs="+", type=int, default=[1, 3, 6, 9],
                    help="PNG (zlib) levels to time for the cache at step 1/8")
    add_threads_argument(ap, default=1)  # what one loader or precompute worker gets
    args = ap.parse_args(argv)
    threads = apply_threads(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"# torch {torch.__version__}, {threads}, device {device}")
    for size_text in args.sizes:
        size = tuple(int(v) for v in size_text.split("x"))
        data = frames(size, args.pairs)
        for name in args.estimators:
            if name.startswith("raft") and device == "cpu" and size[1] > args.raft_max_side:
                continue
            est = get_estimator(name, **({"weights": None} if name.startswith("raft") else {}))
            est(*data[0])  # warm-up
            t0 = time.perf_counter()
            flows = [est(a, b)[0] for a, b in data]
            rate = len(data) / (time.perf_counter() - t0)
            backward = [est(b, a)[0] for a, b in data] if name == "dis" else []
            row = {"estimator": name, "size": size_text, "pairs_per_s": round(rate, 2)}
            if name == "dis":  # the cache, on real estimated flow
                raw = 2 * flows[0].numel() * 4  # forward + backward, float32
                for step_text in args.steps:
                    step = float(Fraction(step_text))
                    sizes, epes = [], []
                    for f, g in zip(flows, backward):
                        png, err = encode(f, g, step)
                        back, _ = decode(png, step)
                        sizes.append(len(png))
                        epes.append((back - f).norm(dim=0).mean().item())
                    row[f"cache_{step_text}"] = {
                        "bytes_per_pair": int(np.mean(sizes)),
                        "ratio_vs_float32": round(float(np.mean(sizes)) / raw, 4),
                        "added_epe_px": round(float(np.mean(epes)), 4)}
                row["dis_both_directions_ms"] = round(2000 / rate, 1)
                for level in args.levels:  # the cache's write and read cost per pair
                    t0 = time.perf_counter()
                    pngs = [encode(f, g, 1 / 8, level)[0] for f, g in zip(flows, backward)]
                    t1 = time.perf_counter()
                    for png in pngs:
                        decode(png, 1 / 8)
                    t2 = time.perf_counter()
                    row[f"png_level_{level}"] = {
                        "encode_ms": round(1000 * (t1 - t0) / len(pngs), 1),
                        "decode_ms": round(1000 * (t2 - t1) / len(pngs), 1),
                        "bytes_per_pair": int(np.mean([len(p) for p in pngs]))}
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
