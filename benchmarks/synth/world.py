"""`SyntheticWorld`: the deterministic procedural driving world (DESIGN.md, "The synthetic
world"). Videos and labelled images are separate scenes, each seeded by
(world seed, purpose, split, index), so any frame can be re-rendered on its own.
"""
from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from .render import GROUND_ID, Render, flow_between, follow, render
from .scene import Scene, make_scene
from .style import restyle

FOCAL_OVER_WIDTH = 0.75  # horizontal field of view of about 67 degrees
VERSIONS = {1: "world 1: fixed sun and camera, class-typical colours (until issue 29)",
            2: "world 2: per-capture time of day / weather / camera drawn from BDD100K's "
               "attribute frequencies, per-instance looks that overlap across classes"}
DEFAULT_VERSION = 2


@dataclass(frozen=True)
class Preset:
    name: str
    video_size: tuple[int, int]  # (H, W)
    fps: float
    frames_per_video: int
    videos: dict[str, int]  # split -> number of videos
    image_sizes: dict[str, tuple[int, int]]  # dataset -> (H, W)
    images: dict[str, dict[str, int]] = field(default_factory=dict)  # dataset -> split -> n


def _images(train: int, val: int) -> dict[str, dict[str, int]]:
    return {d: {"train": train, "val": val} for d in ("cityscapes", "bdd100k", "ade20k")}


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", (72, 128), 10.0, 12, {"train": 3, "val": 1},
                   {"cityscapes": (64, 128), "bdd100k": (72, 128), "ade20k": (96, 128)},
                   _images(8, 4)),
    "small": Preset("small", (288, 512), 10.0, 32, {"train": 6, "val": 2},
                    {"cityscapes": (256, 512), "bdd100k": (288, 512), "ade20k": (384, 512)},
                    _images(40, 16)),
    "full": Preset("full", (720, 1280), 30.0, 120, {"train": 8, "val": 2},
                   {"cityscapes": (1024, 2048), "bdd100k": (720, 1280), "ade20k": (512, 683)},
                   _images(100, 50)),
}


@dataclass(frozen=True)
class VideoSpec:
    name: str
    split: str
    index: int


def hex_name(seed: int, split: str, index: int) -> str:
    """A BDD100K-style name such as ``0a1b2c3d-4e5f6a7b``, deterministic in its inputs."""
    a = zlib.crc32(f"{seed}/{split}/{index}/a".encode())
    b = zlib.crc32(f"{seed}/{split}/{index}/b".encode())
    return f"{a:08x}-{b:08x}"


class SyntheticWorld:
    """Procedural driving world with exact flow, occlusion and labels.

    ``SyntheticWorld(preset="tiny" | "small" | "full", seed=0, version=2)``; frames are
    indexed by integer (or fractional) frame number t at ``preset.fps``. Both versions
    share every scene's geometry; version 2 redraws looks and capture conditions (VERSIONS).
    """

    SPLIT_CODES = {"train": 1, "val": 2}
    PURPOSE_CODES = {"video": 1, "cityscapes": 2, "bdd100k": 3, "ade20k": 4}

    def __init__(self, preset: str = "tiny", seed: int = 0, cache_size: int = 6,
                 version: int = DEFAULT_VERSION):
        if preset not in PRESETS:
            raise KeyError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
        if version not in VERSIONS:
            raise KeyError(f"unknown world version {version!r}; known: "
                           f"{', '.join(map(str, VERSIONS))}")
        self.version = int(version)
        self.preset = PRESETS[preset]
        self.seed = int(seed)
        self.videos = [VideoSpec(hex_name(self.seed, split, i), split, i)
                       for split, n in self.preset.videos.items() for i in range(n)]
        self._renders: OrderedDict = OrderedDict()
        self._cache_size = cache_size

    # -- scenes ---------------------------------------------------------------------------
    def _scene(self, purpose: str, split: str, index: int) -> Scene:
        key = ("scene", purpose, split, index)
        if key not in self._renders:
            duration = (self.preset.frames_per_video / self.preset.fps
                        if purpose == "video" else 1.0)
            seed = [self.seed, self.PURPOSE_CODES[purpose], self.SPLIT_CODES[split], index]
            scene = make_scene(seed, duration)
            self._remember(key, restyle(scene, seed) if self.version == 2 else scene)
        return self._renders[key]

    def _remember(self, key, value):
        self._renders[key] = value
        self._renders.move_to_end(key)
        while len(self._renders) > self._cache_size * 2:
            self._renders.popitem(last=False)

    def _render(self, purpose: str, split: str, index: int, time: float,
                size: tuple[int, int]) -> Render:
        key = ("render", purpose, split, index, float(time), size)
        if key in self._renders:
            self._renders.move_to_end(key)
            return self._renders[key]
        scene = self._scene(purpose, split, index)
        cam = scene.camera(time, size[0], size[1], FOCAL_OVER_WIDTH * size[1])
        out = render(scene, cam, time)
        self._remember(key, out)
        return out

    def conditions(self, purpose: str, split: str, index: int) -> dict:
        """The capture conditions of a video ("video") or still (a dataset name); {} in
        world 1, where every capture has the same light and camera."""
        scene = self._scene(purpose, split, index)
        return scene.style.conditions.describe() if scene.style is not None else {}

    # -- videos ---------------------------------------------------------------------------
    def video(self, video: int | str) -> VideoSpec:
        if isinstance(video, str):
            for spec in self.videos:
                if spec.name == video:
                    return spec
            raise KeyError(f"unknown video {video!r}; known: {[v.name for v in self.videos]}")
        return self.videos[video]

    @property
    def fps(self) -> float:
        return self.preset.fps

    @property
    def num_frames(self) -> int:
        return self.preset.frames_per_video

    def frame(self, video: int | str, t: float) -> dict:
        """One frame: ``image`` uint8[H,W,3] RGB, ``label`` uint8[H,W] Cityscapes train ids,
        ``instance`` int32[H,W] object ids (0 = stuff), ``depth`` float32[H,W] (inf = sky)."""
        spec = self.video(video)
        r = self._render("video", spec.split, spec.index, t / self.fps, self.preset.video_size)
        return {"image": r.image, "label": r.label, "instance": r.instance,
                "depth": r.depth.astype(np.float32)}

    def frame_pair(self, video: int | str, t: float, dt: float) -> dict:
        """Frames t and t + dt of a video with exact flow both ways.

        ``flow_fwd`` float32[H,W,2] (pixels, x first): image1(p) ~ image2(p + flow_fwd(p)).
        ``occlusion_fwd`` bool[H,W]: p has no correspondence in image2 (hidden or out of
        view). ``flow_bwd`` / ``occlusion_bwd`` likewise from image2 to image1. Also
        ``label1``, ``label2`` (train ids), ``instance1``, ``instance2``, ``depth1``,
        ``depth2``, ``time1``, ``time2`` (seconds) and ``video`` (name).
        """
        spec = self.video(video)
        size = self.preset.video_size
        a = self._render("video", spec.split, spec.index, t / self.fps, size)
        b = self._render("video", spec.split, spec.index, (t + dt) / self.fps, size)
        scene = self._scene("video", spec.split, spec.index)
        fwd, occ_fwd = flow_between(scene, a, b)
        bwd, occ_bwd = flow_between(scene, b, a)
        return {"image1": a.image, "image2": b.image, "flow_fwd": fwd, "flow_bwd": bwd,
                "occlusion_fwd": occ_fwd, "occlusion_bwd": occ_bwd,
                "label1": a.label, "label2": b.label,
                "instance1": a.instance, "instance2": b.instance,
                "depth1": a.depth.astype(np.float32), "depth2": b.depth.astype(np.float32),
                "time1": a.time, "time2": b.time, "video": spec.name}

    def point_tracks(self, video: int | str, t: int, xy: np.ndarray,
                     frames: list[int]) -> dict:
        """The true positions in `frames` of the surface points seen at pixels xy [M, 2]
        (x, y, sub-pixel) of frame t: the exact ray through each pixel meets the face its
        pixel shows, and that point moves with its primitive.

        Returns ``xy`` float64[M, F, 2], ``visible`` bool[M, F] (in view and not hidden) and
        ``defined`` bool[M]: False where the pixels around a point show more than one face
        (an edge: which surface the point lies on is not known).
        """
        spec = self.video(video)
        size = self.preset.video_size
        a = self._render("video", spec.split, spec.index, t / self.fps, size)
        scene = self._scene("video", spec.split, spec.index)
        xy = np.asarray(xy, np.float64)
        H, W = a.prim.shape
        x0 = np.clip(np.floor(xy[:, 0]).astype(int), 0, W - 2)
        y0 = np.clip(np.floor(xy[:, 1]).astype(int), 0, H - 2)
        corners = [(y0 + dy, x0 + dx) for dy in (0, 1) for dx in (0, 1)]
        prim, face = a.prim[corners[0]], a.face[corners[0]]
        defined = np.all([(a.prim[c] == prim) & (a.face[c] == face) for c in corners], 0)
        cam = a.camera
        local = np.stack([(xy[:, 0] - cam.cx) / cam.focal, -(xy[:, 1] - cam.cy) / cam.focal,
                          np.ones(len(xy))], -1)
        ray = local @ cam.rotation.T
        points = ray.copy()  # sky: a direction
        ground = prim == GROUND_ID
        points[ground] = cam.center + (-cam.center[1] / ray[ground, 1])[:, None] * ray[ground]
        box = prim > 0
        if box.any():
            lo, hi = scene.boxes.at(a.time)
            axis, f = face[box] // 2, face[box]
            plane = np.where(f % 2 == 1, hi[prim[box] - 1, axis], lo[prim[box] - 1, axis])
            depth = (plane - cam.center[axis]) / ray[box, axis]
            points[box] = cam.center + depth[:, None] * ray[box]
        out_xy = np.empty((len(xy), len(frames), 2))
        visible = np.empty((len(xy), len(frames)), bool)
        for j, f in enumerate(frames):
            b = self._render("video", spec.split, spec.index, f / self.fps, size)
            u, v, visible[:, j] = follow(scene, a.time, points, prim, b)
            out_xy[:, j] = np.stack([u, v], -1)
        return {"xy": out_xy, "visible": visible, "defined": defined}

    # -- labelled still images ------------------------------------------------------------
    def labelled_image(self, dataset: str, split: str, index: int) -> dict:
        """A labelled still for a dataset layout, with per-object boxes for detection.

        ``objects`` lists dicts with ``instance``, ``train_id``, ``box`` (x1, y1, x2, y2
        inclusive pixel coordinates of the visible part), ``visible`` and ``unoccluded``
        pixel counts and ``truncated``.
        """
        size = self.preset.image_sizes[dataset]
        r = self._render(dataset, split, index, 0.5, size)
        scene = self._scene(dataset, split, index)
        return {"image": r.image, "label": r.label, "instance": r.instance,
                "objects": _objects(scene, r)}


def _objects(scene: Scene, r: Render) -> list[dict]:
    objects = []
    H, W = r.label.shape
    ids = np.unique(r.instance)
    for inst in ids[ids > 0]:
        mask = r.instance == inst
        parts = np.flatnonzero(scene.boxes.instance == inst)
        cls = int(scene.boxes.cls[parts[0]])
        # rider / bicycle boxes of one two-wheeler are separate instances already
        ys, xs = np.nonzero(mask)
        touches = xs.min() == 0 or ys.min() == 0 or xs.max() == W - 1 or ys.max() == H - 1
        objects.append({"instance": int(inst), "train_id": cls,
                        "box": (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())),
                        "visible": int(mask.sum()),
                        "unoccluded": int(r.coverage[parts].sum()),
                        "truncated": bool(touches)})
    return objects
