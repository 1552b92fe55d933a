"""Benchmark (not a test): the pretraining loader's throughput per sample kind: frame pairs
and K-frame clips drawn from a test video through ``pretrain.train.StepBatches``, decoded,
and given the flow between consecutive frames by an estimator that runs in the item
(``dis`` on the CPU), split into decoding and flow.

The test video is ``benchmarks.speed.pair_sampling``'s (H.264, keyframe every 30 frames).

    python -m benchmarks.speed.samples --size 288 512 --clip-frames 2 6 --steps 6
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.speed import add_threads_argument, apply_threads
from benchmarks.speed.pair_sampling import write_test_video


def frames_and_flow(frames, rngs, **flows) -> dict:
    """A view maker whose views are the frames and flows: times the data and flow alone."""
    return {"frames": frames, **flows}


def _rate(batches, steps: int, workers: int) -> float:
    """Samples per second over `steps` steps after a first one (workers start, decoders open)."""
    import torch
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers,
                                         sampler=range(steps + 1),
                                         multiprocessing_context="spawn" if workers else None)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in it:
        pass
    return steps * batches.s.batch_size / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, nargs=2, default=(288, 512), metavar=("H", "W"))
    ap.add_argument("--clip-frames", type=int, nargs="+", default=[2, 6])
    ap.add_argument("--clip-fps", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--workers", type=int, nargs="+", default=[0],
                    help="loader workers (0: in this process, what the README table shows)")
    ap.add_argument("--flow", default="dis", help="an estimator that runs on the CPU")
    add_threads_argument(ap)
    args = ap.parse_args(argv)
    print(f"# {apply_threads(args)}")
    from pretrain.data.samples import FrameClips, FramePairs
    from pretrain.data.video import VideoSource
    from pretrain.flow import get_estimator
    from pretrain.train import PretrainSchedule, StepBatches

    schedule = PretrainSchedule(steps=args.steps + 1, batch_size=args.batch, optimizer="sgd",
                                lr=0.1, weight_decay=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        video = write_test_video(Path(tmp) / "v.mp4", seconds=12, size=tuple(args.size))
        source = VideoSource(tmp)
        kinds = [("pairs", FramePairs(source, dt_seconds=0.5))]
        kinds += [(f"clips K={k}", FrameClips(source, clip_frames=k, clip_fps=args.clip_fps))
                  for k in args.clip_frames]
        for name, samples in kinds:
            for workers in args.workers:
                decode = _rate(StepBatches(samples, schedule), args.steps, workers)
                both = _rate(StepBatches(samples, schedule, view_maker=frames_and_flow,
                                         needs_flow=True, flow=get_estimator(args.flow)),
                             args.steps, workers)
                ms = 1000 / both
                print(json.dumps({"samples": name, "size": list(args.size), "flow": args.flow,
                                  "workers": workers, "decoded_per_s": round(decode, 2),
                                  "with_flow_per_s": round(both, 2), "ms_per_sample": round(ms, 1),
                                  "flow_share": round(1 - (1000 / decode) / ms, 3)}), flush=True)
        del video
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
