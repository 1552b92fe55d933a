"""A compact on-disk flow cache: forward and backward flow of each cached pair in one
16-bit 4-channel PNG, quantized to a fixed step (default 1/8 px: at most 1/16 px error
per component), lossless PNG (deflate) on top.

Layout::

    CACHE/<video name>/<t1>_<t2>.png      u16 = round(flow / step) + 32768, channels
                                           (fwd x, fwd y, bwd x, bwd y)
    CACHE/<video name>/meta.json           video, estimator, step, pairs, bytes, errors
    CACHE/cache.json                       estimator, Δt list, start-frame stride, step

A video whose meta.json exists is done: precomputing again skips it (resume).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from .per_video import claim_folder, map_videos, process_estimator, write_atomic

OFFSET = 32768
# zlib level of the PNGs, chosen by `python -m benchmarks.speed.flow --levels 1 3 6 9`
# (README's flow table, 720p, one thread): level 3 encodes in 238 ms per pair, about what
# DIS takes for both directions (276 ms); level 9 took 7974 ms for 20 % fewer bytes
PNG_LEVEL = 3


def encode(flow_fwd: torch.Tensor, flow_bwd: torch.Tensor, step: float,
           level: int = PNG_LEVEL) -> tuple[bytes, dict]:
    """[2, H, W] flows -> PNG bytes and the round-trip error of this file. The level changes
    the bytes, never the decoded flow."""
    both = torch.cat([flow_fwd, flow_bwd]).float().numpy()  # [4, H, W]
    q = np.clip(np.rint(both / step) + OFFSET, 0, 65535).astype(np.uint16)
    ok, png = cv2.imencode(".png", np.ascontiguousarray(q.transpose(1, 2, 0)),
                           [cv2.IMWRITE_PNG_COMPRESSION, level])
    if not ok:
        raise OSError("OpenCV could not encode a 16-bit PNG")
    err = (q.astype(np.float32) - OFFSET) * step - both
    epe = np.sqrt(err[0::2] ** 2 + err[1::2] ** 2)
    return png.tobytes(), {"max_abs_error_px": float(np.abs(err).max()),
                           "mean_epe_px": float(epe.mean()),
                           "clipped": int((np.abs(both / step) > OFFSET - 1).sum())}


def decode(data: bytes | np.ndarray, step: float) -> tuple[torch.Tensor, torch.Tensor]:
    q = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if q is None or q.dtype != np.uint16 or q.ndim != 3 or q.shape[2] != 4:
        raise ValueError("not a flow cache PNG (16-bit, 4 channels)")
    flow = torch.from_numpy((q.astype(np.float32) - OFFSET) * step).permute(2, 0, 1)
    return flow[:2].contiguous(), flow[2:].contiguous()


class FlowCache:
    """Read side: ``pairs(video)`` lists cached (t1, t2); ``load(video, t1, t2)`` returns
    (flow_fwd, flow_bwd) as float32 [2, H, W]."""

    def __init__(self, root):
        self.root = Path(root)
        spec = self.root / "cache.json"
        if not spec.is_file():
            raise FileNotFoundError(f"{self.root} is not a flow cache (no cache.json); make "
                                    f"one with: bench flow precompute --videos DIR --out "
                                    f"{self.root}")
        self.spec = json.loads(spec.read_text())
        self.step = float(self.spec["step"])
        self._meta: dict[str, dict] = {}

    def meta(self, video: str) -> dict | None:
        if video not in self._meta:
            path = self.root / video / "meta.json"
            self._meta[video] = json.loads(path.read_text()) if path.is_file() else None
        return self._meta[video]

    def videos(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob("*/meta.json"))

    def pairs(self, video: str) -> list[tuple[int, int]]:
        m = self.meta(video)
        return [tuple(p) for p in m["pairs"]] if m else []

    def load(self, video: str, t1: int, t2: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.root / video / f"{t1}_{t2}.png"
        if not path.is_file():
            raise FileNotFoundError(f"flow cache has no pair {t1}->{t2} of {video} ({path})")
        return decode(path.read_bytes(), self.step)

    def info(self) -> dict:
        metas = [self.meta(v) for v in self.videos()]
        pairs = sum(len(m["pairs"]) for m in metas)
        stored = sum(m["bytes"] for m in metas)
        raw = sum(m["float32_bytes"] for m in metas)
        return {**self.spec, "videos": len(metas), "pairs": pairs, "bytes": stored,
                "float32_bytes": raw, "ratio": stored / raw if raw else float("nan"),
                "max_abs_error_px": max((m["max_abs_error_px"] for m in metas), default=0.0),
                "mean_epe_px": (sum(m["mean_epe_px"] * len(m["pairs"]) for m in metas)
                                / pairs if pairs else float("nan")),
                "clipped_values": sum(m["clipped"] for m in metas)}


def cache_video(source, index: int, root: Path, *, estimator, estimator_name: str,
                dts: list[int], every: int, step: float, batch: int = 8) -> dict:
    """Flow of pairs (t, t + dt), t = 0, every, 2 every, ..., for one video (both
    directions), written as PNGs, then meta.json last (so a killed video is redone)."""
    name = source.name(index)
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    info = source.open(index).info
    n = info.num_frames
    pairs = [(t, t + dt) for t in range(0, n, every) for dt in dts if t + dt < n]
    total, errors = 0, []
    for i in range(0, len(pairs), batch):  # a few frames in memory at a time, not the video
        chunk = pairs[i:i + batch]
        wanted = sorted({k for p in chunk for k in p})
        frames = dict(zip(wanted, source.read(index, wanted)))
        a, b = (torch.stack([torch.from_numpy(frames[p[j]]) for p in chunk])
                .permute(0, 3, 1, 2).float() / 255 for j in (0, 1))
        meta = {"videos": [str(source.items[index])] * len(chunk),
                "frames1": [p[0] for p in chunk], "frames2": [p[1] for p in chunk]}
        fwd = estimator(a, b, **meta)
        bwd = estimator(b, a, **{**meta, "frames1": meta["frames2"], "frames2": meta["frames1"]})
        for (t1, t2), f, g in zip(chunk, fwd, bwd):
            png, err = encode(f, g, step)
            write_atomic(out / f"{t1}_{t2}.png", png)
            total += len(png)
            errors.append(err)
    h, w = info.height, info.width
    meta = {"video": str(source.items[index]), "estimator": estimator_name, "step": step,
            "pairs": pairs, "height": h, "width": w, "bytes": total,
            "float32_bytes": len(pairs) * 2 * 2 * h * w * 4,
            "max_abs_error_px": max((e["max_abs_error_px"] for e in errors), default=0.0),
            "mean_epe_px": float(np.mean([e["mean_epe_px"] for e in errors])) if errors else 0.0,
            "clipped": sum(e["clipped"] for e in errors)}
    write_atomic(out / "meta.json", json.dumps(meta).encode())
    return meta


def _worker(args) -> dict:
    source, index, root, name, kwargs, dts, every, step = args
    return cache_video(source, index, root, estimator=process_estimator(name, kwargs),
                       estimator_name=name, dts=dts, every=every, step=step)


def precompute(source, root, *, estimator: str, estimator_kwargs: dict | None = None,
               dts: list[int], every: int = 1, step: float = 1 / 8, workers: int = 1,
               progress: bool = True) -> dict:
    """Cache every video of `source` under `root`, `workers` processes in parallel; videos
    already cached are skipped. Returns {video name: meta or "skipped: why"}."""
    root = Path(root)
    spec = {"estimator": estimator, "dts": list(dts), "every": every, "step": step,
            "format": "flowssl-flowcache/1"}
    # RAFT's weights and iterations change the flow: a cache holds one setting
    spec.update({k: v for k, v in (estimator_kwargs or {}).items()
                 if k in ("release", "iterations")})
    claim_folder(root, "cache.json", spec)
    cached = {i for i in range(len(source)) if (root / source.name(i) / "meta.json").is_file()}
    return map_videos(source, cached, _worker,
                      (root, estimator, estimator_kwargs or {}, list(dts), every, step),
                      workers=workers, desc=f"flow ({estimator})", progress=progress)
