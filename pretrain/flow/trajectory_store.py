"""The trajectory store: PiCO's point tracks of every video of a folder, kept as data like the
flow cache (PiCO Sec. 3.2, App. A.1).

Each video gets `points` start points uniform in space and time, tracked along the flow
between frames stride apart (Eq. 2) and stopped only when they leave the view or break
Eq. 3 with (gamma 0, `delta_max`). Both sides of Eq. 3 are kept for every step in half
precision, so `load(video, gamma, delta)` gives the trajectories of any rule at most as
loose as the store's without recomputing flow (it refuses a looser one).

Layout::

    STORE/trajectories.json   format, points, stride, seed, delta_max, flow source
    STORE/<video name>.npz    start, length, stop [N]; points [P, 2] float32, error and
                              magnitude [P] float16 (the step from each position); meta

A video whose .npz exists is done: building again skips it (resume).
"""
from __future__ import annotations

import io
import json
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from .per_video import claim_folder, map_videos, process_estimator, write_atomic
from .trajectories import ENDED, INCONSISTENT, LEFT_VIEW, Tracker, Tracks, Trajectories, \
    start_points

FORMAT = "flowssl-trajectories/1"
SPEC = "trajectories.json"
STOPS = {ENDED: "video ended", LEFT_VIEW: "left the view", INCONSISTENT: "inconsistent"}


def video_rng(seed: int, video: str) -> np.random.Generator:
    """The start points of a video depend on the store's seed and the video's name only."""
    return np.random.default_rng([seed, zlib.crc32(video.encode())])


def pack(tracks: Tracks) -> dict[str, np.ndarray]:
    """Tracks -> the ragged arrays of a store file (positions start..last of each point)."""
    rows = [slice(int(s), int(e) + 1) for s, e in zip(tracks.start, tracks.last)]
    return {"start": tracks.start.numpy().astype(np.int32),
            "length": (tracks.last - tracks.start + 1).numpy().astype(np.int32),
            "stop": tracks.stop.numpy(),
            "points": np.concatenate([tracks.points[n, r].numpy() for n, r in enumerate(rows)]
                                     or [np.zeros((0, 2), np.float32)]),
            "error": np.concatenate([tracks.error[n, r].numpy() for n, r in enumerate(rows)]
                                    or [np.zeros(0, np.float16)]),
            "magnitude": np.concatenate([tracks.magnitude[n, r].numpy()
                                         for n, r in enumerate(rows)]
                                        or [np.zeros(0, np.float16)])}


def unpack(arrays: dict[str, np.ndarray], num_frames: int, rule: tuple[float, float],
           where: str) -> Tracks:
    """The inverse of `pack`, checking that the arrays fit together."""
    start, length = arrays["start"].astype(np.int64), arrays["length"].astype(np.int64)
    total = int(length.sum())
    ok = (len(start) == len(length) == len(arrays["stop"])
          and arrays["points"].shape == (total, 2)
          and arrays["error"].shape == arrays["magnitude"].shape == (total,)
          and (length >= 1).all() and (start >= 0).all()
          and (start + length <= num_frames).all())
    if not ok:
        raise ValueError(f"{where}: arrays do not fit together (a damaged or foreign file); "
                         f"delete it and build the store again to redo this video")
    N = len(start)
    row = np.repeat(np.arange(N), length)
    col = np.arange(total) - np.repeat(np.cumsum(length) - length - start, length)
    points = torch.full((N, num_frames, 2), float("nan"))
    error = torch.full((N, num_frames), float("inf"), dtype=torch.float16)
    magnitude = error.clone()
    points[row, col] = torch.from_numpy(arrays["points"].astype(np.float32))
    error[row, col] = torch.from_numpy(arrays["error"])
    magnitude[row, col] = torch.from_numpy(arrays["magnitude"])
    start_t = torch.from_numpy(start)
    return Tracks(points=points, start=start_t, last=start_t + torch.from_numpy(length) - 1,
                  stop=torch.from_numpy(arrays["stop"].astype(np.uint8)), error=error,
                  magnitude=magnitude, rule=rule)


class TrajectoryStore:
    """Read side: ``videos()``; ``load(video, gamma=0, delta=4)`` -> Trajectories over the
    store's frames (``frames(video)`` maps them to video frame indices); ``info()``."""

    def __init__(self, root):
        self.root = Path(root)
        path = self.root / SPEC
        if not path.is_file():
            raise FileNotFoundError(f"{self.root} is not a trajectory store (no {SPEC}); make "
                                    f"one with: bench flow trajectories --videos DIR --out "
                                    f"{self.root}")
        self.spec = json.loads(path.read_text())
        if self.spec.get("format") != FORMAT:
            raise ValueError(f"{path}: format {self.spec.get('format')!r}, this version reads "
                             f"{FORMAT!r}: build the store again")
        self.rule = (0.0, float(self.spec["delta_max"]))

    def videos(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.npz"))

    def _arrays(self, video: str) -> tuple[dict, dict]:
        path = self.root / f"{video}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"trajectory store {self.root} has no video {video!r} "
                                    f"({path})")
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        return arrays, json.loads(str(arrays.pop("meta")))

    def meta(self, video: str) -> dict:
        return self._arrays(video)[1]

    def tracks(self, video: str) -> Tracks:
        arrays, meta = self._arrays(video)
        return unpack(arrays, meta["positions"], self.rule, str(self.root / f"{video}.npz"))

    def load(self, video: str, gamma: float = 0.0, delta: float = 4.0) -> Trajectories:
        """PiCO Eq. 3 with (gamma, delta) applied to the stored tracks."""
        return self.tracks(video).threshold(gamma, delta)

    def frames(self, video: str) -> list[int]:
        meta = self.meta(video)
        return list(range(0, meta["positions"] * meta["stride"], meta["stride"]))

    def info(self, delta: float = 4.0) -> dict:
        metas, lengths, stops = [], [], np.zeros(3, np.int64)
        for v in self.videos():
            arrays, meta = self._arrays(v)
            metas.append(meta)
            traj = unpack(arrays, meta["positions"], self.rule, v).threshold(0.0, delta)
            lengths.append((traj.end - traj.start + 1).float())
            stops += np.bincount(arrays["stop"], minlength=3)[:3]
        sizes = [(self.root / f"{v}.npz").stat().st_size for v in self.videos()]
        length = torch.cat(lengths) if lengths else torch.zeros(0)
        return {**self.spec, "videos": len(metas), "bytes": sum(sizes),
                "bytes_per_video": sum(sizes) / max(len(metas), 1),
                "seconds_per_video": sum(m["seconds"] for m in metas) / max(len(metas), 1),
                "tracks": int(length.numel()), "delta": delta,
                "mean_frames": float(length.mean()) if len(length) else float("nan"),
                "stops": {STOPS[k]: int(stops[k]) for k in STOPS}}


def _flow_steps(source, index: int, *, stride: int, estimator=None, cache=None,
                batch: int = 8):
    """Yield (k, flow_fwd, flow_bwd) [2, H, W] between frames k*stride and (k+1)*stride, a
    few frames in memory at a time, from the flow cache or an estimator."""
    name = source.name(index)
    n = source.open(index).info.num_frames
    steps = (n - 1) // stride
    for k0 in range(0, steps, batch):
        ks = list(range(k0, min(k0 + batch, steps)))
        if cache is not None:
            for k in ks:
                try:
                    yield (k, *cache.load(name, k * stride, (k + 1) * stride))
                except FileNotFoundError:
                    raise FileNotFoundError(
                        f"flow cache {cache.root} lacks {name} frames {k * stride} -> "
                        f"{(k + 1) * stride}: precompute it with --dt {stride} --every "
                        f"{stride}") from None
            continue
        frames = source.read(index, [k * stride for k in ks + [ks[-1] + 1]])
        x = torch.stack([torch.from_numpy(f) for f in frames]).permute(0, 3, 1, 2).float() / 255
        meta = {"videos": [str(source.items[index])] * len(ks),
                "frames1": [k * stride for k in ks], "frames2": [(k + 1) * stride for k in ks]}
        fwd = estimator(x[:-1], x[1:], **meta)
        bwd = estimator(x[1:], x[:-1], **{**meta, "frames1": meta["frames2"],
                                          "frames2": meta["frames1"]})
        for i, k in enumerate(ks):
            yield k, fwd[i], bwd[i]


def track_video(source, index: int, root: Path, *, spec: dict, estimator=None,
                cache=None) -> dict:
    """Track one video's start points and write its .npz (atomically: a killed video is
    redone). Returns its meta."""
    began = time.perf_counter()
    name = source.name(index)
    info = source.open(index).info
    stride = spec["stride"]
    T = (info.num_frames - 1) // stride + 1
    start, xy = start_points(T, info.height, info.width, spec["points"],
                             video_rng(spec["seed"], name))
    tracker = Tracker(start, xy, T, rule=(0.0, spec["delta_max"]))
    for k, fwd, bwd in _flow_steps(source, index, stride=stride, estimator=estimator,
                                   cache=cache):
        tracker.step(k, fwd, bwd)
    arrays = pack(tracker.tracks())
    meta = {"video": str(source.items[index]), "positions": T, "stride": stride,
            "num_frames": info.num_frames, "height": info.height, "width": info.width,
            "seconds": round(time.perf_counter() - began, 3)}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.array(json.dumps(meta)), **arrays)
    write_atomic(root / f"{name}.npz", buffer.getvalue())
    return meta


def _worker(args) -> dict:
    source, index, root, spec, estimator_kwargs = args
    if "cache" in spec["flow"]:
        from .cache import FlowCache
        kw = {"cache": FlowCache(spec["flow"]["cache"])}
    else:
        kw = {"estimator": process_estimator(spec["flow"]["estimator"], estimator_kwargs)}
    return track_video(source, index, root, spec=spec, **kw)


def build_store(source, root, *, estimator: str | None = None,
                estimator_kwargs: dict | None = None, cache=None, points: int = 1000,
                stride: int = 1, delta_max: float = 32.0, seed: int = 0, workers: int = 1,
                progress: bool = True) -> dict:
    """Track every video of `source` into the store `root` (flow from `cache`, a flow cache
    folder, or else from `estimator`), `workers` processes in parallel; videos already
    there are skipped. Returns {video name: meta, "cached before" or "skipped: why"}."""
    root = Path(root)
    if cache is not None:
        from .cache import FlowCache
        flow = {"cache": str(Path(cache).resolve()),
                "estimator": FlowCache(cache).spec["estimator"]}
    else:
        flow = {"estimator": estimator,
                **{k: v for k, v in (estimator_kwargs or {}).items()
                   if k in ("release", "iterations")}}
    spec = {"format": FORMAT, "points": points, "stride": stride, "seed": seed,
            "gamma": 0.0, "delta_max": float(delta_max), "flow": flow}
    claim_folder(root, SPEC, spec)
    done = {i for i in range(len(source)) if (root / f"{source.name(i)}.npz").is_file()}
    return map_videos(source, done, _worker, (root, spec, estimator_kwargs or {}),
                      workers=workers, desc="trajectories", progress=progress)
