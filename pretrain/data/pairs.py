"""Frame-pair sampling from videos: one item per video visit, R pairs (t, t + dt) from it
(repeated sampling, PooDLe App. A / MAE-st), with Δt in frames or seconds:

- FlowE Sec. 4.1: ``dt_seconds=0.5``;
- PooDLe Sec. 4.1: ``dt_frames=(15, 30)`` at 30 fps (0.5-1 s);
- PixPro-flow: ``dt_frames=k`` frames of a 10 fps stream.

With a flow cache the pairs are drawn from the cached ones and carry their flow. Items are
a pure function of (seed, epoch, index) and the files. A video that fails to decode is
skipped (another one is drawn), recorded in the item's ``skipped`` and in
``source.skipped``.
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


class FramePairs(torch.utils.data.Dataset):
    def __init__(self, source: VideoSource, *, dt_frames=None, dt_seconds=None,
                 repeats: int = 1, seed: int = 0, flow_cache=None, max_tries: int = 20):
        if (dt_frames is None) == (dt_seconds is None) and flow_cache is None:
            raise ValueError("give exactly one of dt_frames and dt_seconds")
        self.source, self.repeats, self.seed = source, int(repeats), int(seed)
        self.dt_frames, self.dt_seconds = _range(dt_frames, "dt_frames"), _range(
            dt_seconds, "dt_seconds")
        self.cache, self.max_tries, self.epoch = flow_cache, max_tries, 0

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _draw_pairs(self, video: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        if self.cache is not None:
            pairs = self.cache.pairs(self.source.name(video))
            if not pairs:
                raise VideoError(f"{self.source.items[video]}: no cached flow")
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
                pairs = self._draw_pairs(video, rng)
                frames = [self.source.read(video, list(p)) for p in pairs]
                break
            except VideoError:
                skipped.append(str(self.source.items[video]))
        else:
            raise VideoError(f"no decodable video after {self.max_tries} tries; "
                             f"{self.source.summary()}")
        fps = self.source.open(video).info.fps
        item = {"frames": torch.from_numpy(np.stack([np.stack(f) for f in frames])),
                "frame_index": torch.tensor(pairs, dtype=torch.long),
                "time": torch.tensor(pairs, dtype=torch.float64) / fps,
                "video": self.source.name(video), "path": str(self.source.items[video]),
                "skipped": skipped}
        if self.cache is not None:
            flows = [self.cache.load(self.source.name(video), *p) for p in pairs]
            item["flow_fwd"] = torch.stack([f for f, _ in flows])
            item["flow_bwd"] = torch.stack([b for _, b in flows])
        return item


def collate_pairs(items: list[dict]) -> dict:
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
