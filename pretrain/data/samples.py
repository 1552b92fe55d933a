"""What one batch item of pretraining is, drawn from videos: one item per video visit with
`repeats` samples from it (repeated sampling, PooDLe App. A / MAE-st), each sample K frames
of one video and, with a flow cache, the flow between consecutive ones.

- ``pairs`` (K = 2): frames (t, t + Δt), Δt in frames or seconds. FlowE Sec. 4.1:
  ``dt_seconds=0.5``; PooDLe Sec. 4.1: ``dt_frames=(15, 30)`` at 30 fps (0.5-1 s).
- ``clips`` (K = ``clip_frames``): frames t, t + s, ..., t + (K-1) s of the video resampled
  at ``clip_fps`` (s = round(video fps / clip_fps)); the flow between consecutive frames
  chains to the flow from the first to the last (PixPro-flow Sec. 3, Eq. 1: K = 6 frames of
  a 10 fps stream, 0.5 s). Trajectory samples can be made from clips and their flow by
  ``pretrain.flow.trajectories.trajectory_pairs``.
- ``tracks`` (K = 1 + ``partners``): PiCO's anchor frame and the frames chosen for it on the
  video's stored trajectories, with the point pairs between them (``TrackedFrames``).

Items are a pure function of (seed, epoch, index) and the files. With a flow cache the
samples are drawn among the cached frame pairs (pairs) or chains of them (clips). A video
that fails to decode is skipped (another one is drawn), recorded in the item's ``skipped``
and in ``source.skipped``.
"""
from __future__ import annotations

import numpy as np
import torch

from .video import VideoError, VideoSource


def _range(value, name: str):
    if value is None:
        return None
    lo, hi = (value, value) if np.isscalar(value) else tuple(value)
    if not 0 < lo <= hi:
        raise ValueError(f"{name} must be positive (a value or a [min, max] range), got {value}")
    return lo, hi


class VideoSamples(torch.utils.data.Dataset):
    """Item: {"frames": uint8 [R, K, H, W, 3], "frame_index": long [R, K], "time": seconds
    [R, K], "video", "path", "skipped"} and, with a flow cache, "flow_fwd" / "flow_bwd":
    float [R, K-1, 2, H, W], frame k -> k+1 and k+1 -> k. Subclasses draw the frame indices
    (``_draw``)."""
    kind = ""

    def __init__(self, source: VideoSource, *, repeats: int = 1, seed: int = 0,
                 flow_cache=None, max_tries: int = 20):
        self.source, self.repeats, self.seed = source, int(repeats), int(seed)
        self.cache, self.max_tries, self.epoch = flow_cache, max_tries, 0

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _draw(self, video: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def _annotate(self, video: int, samples: list[tuple[int, ...]],
                  rng: np.random.Generator) -> dict:
        """Per-item tensors beside the frames (``TrackedFrames``: the point pairs)."""
        return {}

    def __getitem__(self, index: int) -> dict:
        """Attempt k draws from its own generator (seed, epoch, index, k), so the item does
        not depend on how far a failed attempt got, nor on which files this process has
        already found unreadable: resume and any number of workers give the same items."""
        skipped = []
        for attempt in range(self.max_tries):
            rng = np.random.default_rng([self.seed, self.epoch, index, attempt])
            video = int(index) if attempt == 0 else int(rng.integers(len(self.source)))
            if self.source.is_bad(video):
                skipped.append(str(self.source.items[video]))
                continue
            try:
                samples = self._draw(video, rng)
                frames = [self.source.read(video, list(s)) for s in samples]
                extras = self._annotate(video, samples, rng)
                break
            except VideoError:
                skipped.append(str(self.source.items[video]))
        else:
            raise VideoError(f"no decodable video after {self.max_tries} tries; "
                             f"{self.source.summary()}")
        fps = self.source.open(video).info.fps
        item = {"frames": torch.from_numpy(np.stack([np.stack(f) for f in frames])),
                "frame_index": torch.tensor(samples, dtype=torch.long),
                "time": torch.tensor(samples, dtype=torch.float64) / fps,
                "video": self.source.name(video), "path": str(self.source.items[video]),
                "skipped": skipped, **extras}
        if self.cache is not None:
            name = self.source.name(video)
            flows = [[self.cache.load(name, a, b) for a, b in zip(s[:-1], s[1:])]
                     for s in samples]
            H, W = item["frames"].shape[2:4]
            for j, key in enumerate(("flow_fwd", "flow_bwd")):
                item[key] = torch.stack([torch.stack([f[j] for f in fs]) if fs else
                                         torch.zeros(0, 2, H, W) for fs in flows])
        return item

    def _cached_pairs(self, video: int) -> list[tuple[int, int]]:
        pairs = self.cache.pairs(self.source.name(video))
        if not pairs:
            raise VideoError(f"{self.source.items[video]}: no cached flow")
        return pairs


class FramePairs(VideoSamples):
    kind = "pairs"

    def __init__(self, source: VideoSource, *, dt_frames=None, dt_seconds=None, **kw):
        if (dt_frames is None) == (dt_seconds is None) and kw.get("flow_cache") is None:
            raise ValueError("give exactly one of dt_frames and dt_seconds")
        super().__init__(source, **kw)
        self.dt_frames, self.dt_seconds = _range(dt_frames, "dt_frames"), _range(
            dt_seconds, "dt_seconds")

    def _draw(self, video: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        if self.cache is not None:
            pairs = self._cached_pairs(video)
            return [tuple(pairs[k]) for k in rng.integers(len(pairs), size=self.repeats)]
        info = self.source.open(video).info
        out = []
        for _ in range(self.repeats):
            if self.dt_frames is not None:
                dt = int(rng.integers(self.dt_frames[0], self.dt_frames[1] + 1))
            else:
                dt = max(1, int(round(rng.uniform(*self.dt_seconds) * info.fps)))
            if dt >= info.num_frames:
                raise VideoError(f"{info.path}: {info.num_frames} frames, shorter than Δt {dt}")
            t = int(rng.integers(0, info.num_frames - dt))
            out.append((t, t + dt))
        return out


class FrameClips(VideoSamples):
    kind = "clips"

    def __init__(self, source: VideoSource, *, clip_frames: int, clip_fps: float, **kw):
        if int(clip_frames) < 1 or not clip_fps > 0:
            raise ValueError(f"clip_frames must be >= 1 and clip_fps > 0, got {clip_frames}, "
                             f"{clip_fps}")
        super().__init__(source, **kw)
        self.clip_frames, self.clip_fps = int(clip_frames), float(clip_fps)

    def stride(self, video: int) -> int:
        """Frames of the video between consecutive clip frames."""
        return max(1, int(round(self.source.open(video).info.fps / self.clip_fps)))

    def _draw(self, video: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
        s, K = self.stride(video), self.clip_frames
        if self.cache is not None and K > 1:
            starts = self._cached_starts(video, s)
            first = [int(starts[k]) for k in rng.integers(len(starts), size=self.repeats)]
        else:
            n = self.source.open(video).info.num_frames
            if (K - 1) * s >= n:
                raise VideoError(f"{self.source.items[video]}: {n} frames, shorter than a "
                                 f"clip of {K} frames {s} apart")
            first = [int(t) for t in rng.integers(0, n - (K - 1) * s, size=self.repeats)]
        return [tuple(t + i * s for i in range(K)) for t in first]

    def _cached_starts(self, video: int, s: int) -> list[int]:
        pairs = set(map(tuple, self._cached_pairs(video)))
        K = self.clip_frames
        starts = sorted(t for t, u in pairs if u == t + s and all(
            (t + i * s, t + (i + 1) * s) in pairs for i in range(1, K - 1)))
        if not starts:
            raise ValueError(f"flow cache {self.cache.root} holds no {K - 1} consecutive "
                             f"pairs {s} frames apart for {self.source.name(video)}: "
                             f"precompute it with --dt {s} --every {s}")
        return starts


class TrackedFrames(VideoSamples):
    """PiCO (Sec. 3.2-3.3): per sample an anchor frame and `partners` frames chosen on the
    video's stored trajectories (``pretrain.flow.trajectory_store``, Eq. 3 with `gamma`,
    `delta`) by anchor sampling or at random (Fig. 5), and the point pairs tracked from the
    anchor to each partner. Frames (K = 1 + partners): anchor first. Item extra "points":
    float [R, partners, points, 4], (x, y) in the anchor then in the partner, frame pixels,
    at most `points` pairs drawn at random, NaN-padded. Where fewer partners are found, the
    last one repeats; with none (no trajectory leaves the anchor), the anchor is its own
    partner and its active points pair with themselves."""
    kind = "tracks"

    def __init__(self, source: VideoSource, *, trajectories, partners: int = 1,
                 frame_selection: str = "anchor", gamma: float = 0.0, delta: float = 4.0,
                 points: int = 1000, **kw):
        from ..flow.trajectories import FRAME_SELECTIONS
        from ..flow.trajectory_store import TrajectoryStore
        if frame_selection not in FRAME_SELECTIONS:
            raise ValueError(f"frame_selection {frame_selection!r}: one of "
                             f"{', '.join(FRAME_SELECTIONS)}")
        super().__init__(source, **kw)
        self.store = trajectories if isinstance(trajectories, TrajectoryStore) else \
            TrajectoryStore(trajectories)
        stored = set(self.store.videos())
        missing = [source.name(i) for i in range(len(source)) if source.name(i) not in stored]
        if missing:
            raise ValueError(f"trajectory store {self.store.root} lacks {len(missing)} of the "
                             f"{len(source)} videos (first: {missing[0]}); build it with: bench "
                             f"flow trajectories --videos DIR --out {self.store.root}")
        self.partners, self.selection = int(partners), frame_selection
        self.gamma, self.delta, self.points = float(gamma), float(delta), int(points)
        self._tracks: dict = {}

    def __getstate__(self):  # loader workers read the store themselves
        return {**self.__dict__, "_tracks": {}}

    def trajectories(self, video: int):
        """(Trajectories under Eq. 3 with gamma, delta; frames between store positions)."""
        name = self.source.name(video)
        if name not in self._tracks:
            if len(self._tracks) >= 8:
                self._tracks.pop(next(iter(self._tracks)))
            meta = self.store.meta(name)
            info = self.source.open(video).info
            if (meta["height"], meta["width"]) != (info.height, info.width):
                raise ValueError(f"trajectory store {self.store.root}: {name} was tracked at "
                                 f"{meta['height']}x{meta['width']}, the video is "
                                 f"{info.height}x{info.width}; build the store from these "
                                 f"videos")
            self._tracks[name] = (self.store.load(name, gamma=self.gamma, delta=self.delta),
                                  meta["stride"])
        return self._tracks[name]

    def _draw(self, video: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
        from ..flow.trajectories import select_frames
        traj, stride = self.trajectories(video)
        out = []
        for _ in range(self.repeats):
            anchor, chosen = select_frames(traj, self.partners, rng, selection=self.selection)
            chosen = (chosen or [anchor]) + [chosen[-1] if chosen else anchor] * self.partners
            out.append(tuple(stride * t for t in [anchor, *chosen[:self.partners]]))
        return out

    def _annotate(self, video: int, samples: list[tuple[int, ...]],
                  rng: np.random.Generator) -> dict:
        from ..flow.trajectories import point_pairs
        traj, stride = self.trajectories(video)
        points = torch.full((len(samples), self.partners, self.points, 4), float("nan"))
        for r, frames in enumerate(samples):
            anchor = frames[0] // stride
            for j, t in enumerate(frames[1:]):
                a, b = point_pairs(traj, anchor, t // stride)
                keep = rng.permutation(len(a))[:self.points]
                points[r, j, :len(keep)] = torch.cat([a[keep], b[keep]], dim=1)
        return {"points": points}


SAMPLES = {"pairs": FramePairs, "clips": FrameClips, "tracks": TrackedFrames}
# the data keys of each kind (the rest of a data section: repeats)
SAMPLE_KEYS = {"pairs": ("dt_frames", "dt_seconds"), "clips": ("clip_frames", "clip_fps"),
               "tracks": ("trajectories", "partners", "frame_selection", "gamma", "delta",
                          "points")}


def make_samples(kind: str, source: VideoSource, data: dict, *, seed: int = 0,
                 flow_cache=None) -> VideoSamples:
    """A config's data section -> the dataset of the method's sample kind."""
    if kind not in SAMPLES:
        raise KeyError(f"unknown sample kind {kind!r}; known: {', '.join(SAMPLES)}")
    kwargs = {k: data[k] for k in SAMPLE_KEYS[kind] if data.get(k) is not None}
    if kind == "tracks" and not data.get("trajectories"):
        raise ValueError("data.trajectories: this method reads a trajectory store; give "
                         "data.trajectories=STORE (make one with: bench flow trajectories "
                         "--videos DIR --out STORE)")
    return SAMPLES[kind](source, repeats=data.get("repeats", 1), seed=seed,
                         flow_cache=flow_cache, **kwargs)


def collate_samples(items: list[dict]) -> dict:
    """Stack tensors (videos of one size), keep names as lists, join the skipped lists."""
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if key == "skipped":
            out[key] = [p for v in values for p in v]
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out
