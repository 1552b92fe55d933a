"""Benchmark (not a test): random frame pairs (t, t + Δt) per second on ONE core (the process
is pinned to a CPU) for each decoder of ``pretrain.data.video``, against a naive loop that
decodes from the start of the video for every pair.

The test video is written here: 1280x720 at 30 fps, H.264 (libx264 through PyAV) with a
keyframe every `--gop` frames, showing a slowly panning textured scene.

    python -m benchmarks.speed.pair_sampling --seconds 20 --gop 30 --dt 15 --pairs 40
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.speed import add_threads_argument, apply_threads


def write_test_video(path: Path, *, seconds: float, fps: int = 30, size=(720, 1280),
                     gop: int = 30, seed: int = 0) -> Path:
    import av
    rng = np.random.default_rng(seed)
    H, W = size
    world = cv2.resize(rng.integers(0, 255, (H // 8, 2 * W // 8, 3), dtype=np.uint8),
                       (2 * W, H), interpolation=cv2.INTER_CUBIC)
    world = cv2.add(world, rng.integers(0, 24, world.shape, dtype=np.uint8))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "preset": "veryfast",
                          "crf": "23"}
        for t in range(int(seconds * fps)):
            x = int(t * W / (seconds * fps))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(world[:, x:x + W]),
                                               format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def naive_pairs(path: Path, pairs: list[tuple[int, int]]) -> None:
    """Decode from the first frame up to t + Δt for every pair (what many loaders do)."""
    for t1, t2 in pairs:
        cap = cv2.VideoCapture(str(path))
        for k in range(t2 + 1):
            ok, frame = cap.read()
            if not ok:
                raise RuntimeError(f"frame {k} of {path}")
        cap.release()


def sampler_pairs(path: Path, pairs, backend: str, repeats: int) -> None:
    from pretrain.data.video import VideoSource
    source = VideoSource(path, backend=backend)
    for i in range(0, len(pairs), repeats):  # R pairs per visit share the open decoder
        for t1, t2 in pairs[i:i + repeats]:
            source.read(0, [t1, t2])
        source._open.clear()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--gop", type=int, default=30)
    ap.add_argument("--dt", type=int, default=15)
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--repeats", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--naive-pairs", type=int, default=6)
    ap.add_argument("--video", default=None, help="use this video instead of writing one")
    add_threads_argument(ap, default=1)  # decoding runs in one loader worker
    args = ap.parse_args(argv)
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.threads]))
    print(f"# {apply_threads(args)}")
    tmp = tempfile.TemporaryDirectory()
    path = Path(args.video) if args.video else write_test_video(
        Path(tmp.name) / "test.mp4", seconds=args.seconds, gop=args.gop)
    cap = cv2.VideoCapture(str(path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    rng = np.random.default_rng(0)
    starts = rng.integers(0, n - args.dt, args.pairs)
    pairs = [(int(t), int(t) + args.dt) for t in starts]
    results = {"video": str(path), "frames": n, "gop": args.gop, "dt": args.dt,
               "size": os.path.getsize(path), "cores": 1}
    t0 = time.perf_counter()
    naive_pairs(path, pairs[:args.naive_pairs])
    results["naive_pairs_per_s"] = round(args.naive_pairs / (time.perf_counter() - t0), 2)
    for backend in ("pyav", "opencv"):
        for r in args.repeats:
            t0 = time.perf_counter()
            sampler_pairs(path, pairs, backend, r)
            results[f"{backend}_R{r}_pairs_per_s"] = round(
                len(pairs) / (time.perf_counter() - t0), 2)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
