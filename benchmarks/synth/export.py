"""Write the synthetic world in the real on-disk layouts of Cityscapes, BDD100K and
ADE20K, plus BDD100K-style videos with ground-truth flow and occlusion.

Ground-truth flow of consecutive video frames goes to ``bdd100k/flow_gt/<split>/<video>.npz``
(int16 in 1/32 px, so at most 1/64 px quantization error; flows beyond +-1023 px only
occur on occluded pixels and are clipped). Any other (t, dt) is exact through
``SyntheticWorld(preset, seed).frame_pair(video, t, dt)`` using ``synth_manifest.json``.
The reader is ``pretrain.flow.estimators.read_flow_gt`` (the ``gt`` flow estimator).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from readout.datasets.classes import (BDD100K_DET_CLASSES, CITYSCAPES_INSTANCE_TRAIN_IDS,
                                      IGNORE_INDEX, cityscapes_train_to_label_ids)

from . import scene as S
from .world import DEFAULT_VERSION, PRESETS, VERSIONS, SyntheticWorld, hex_name

MANIFEST = "synth_manifest.json"
FLOW_SCALE = 32.0  # stored value = round(flow * FLOW_SCALE)
CITIES = {"train": ("aachen", "bochum", "bremen", "cologne"),
          "val": ("frankfurt", "lindau", "munster")}
ADE_SPLITS = {"train": "training", "val": "validation"}
DET_CATEGORY = {S.PERSON: "pedestrian", S.RIDER: "rider", S.CAR: "car", S.TRUCK: "truck",
                S.BUS: "bus", S.TRAIN: "train", S.MOTORCYCLE: "motorcycle",
                S.BICYCLE: "bicycle", S.LIGHT: "traffic light", S.SIGN: "traffic sign"}
ADE_ID = {S.ROAD: 7, S.SIDEWALK: 12, S.BUILDING: 2, S.WALL: 1, S.FENCE: 33, S.POLE: 94,
          S.LIGHT: 137, S.SIGN: 44, S.VEGETATION: 5, S.TERRAIN: 10, S.SKY: 3, S.PERSON: 13,
          S.RIDER: 13, S.CAR: 21, S.TRUCK: 84, S.BUS: 81, S.TRAIN: 0, S.MOTORCYCLE: 117,
          S.BICYCLE: 128}
"""Cityscapes train id -> ADE20K annotation value (class index + 1; 0 = other: ADE20K has
no train class)."""
MIN_BOX_PIXELS = 4


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]), params):
        raise OSError(f"could not write {path}")


def _lut(mapping: dict[int, int], default: int) -> np.ndarray:
    lut = np.full(256, default, np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut


def write_cityscapes(world: SyntheticWorld, root: Path, progress=True) -> int:
    to_label_id = cityscapes_train_to_label_ids()
    n = 0
    for split, count in world.preset.images["cityscapes"].items():
        for i in tqdm(range(count), desc=f"cityscapes {split}", disable=None if progress else True):
            city = CITIES[split][i % len(CITIES[split])]
            stem = f"{city}_{i:06d}_000019"
            s = world.labelled_image("cityscapes", split, i)
            _write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                       s["image"])
            label_ids = to_label_id[s["label"]]
            gt = root / "gtFine" / split / city
            _write_png(gt / f"{stem}_gtFine_labelIds.png", label_ids)
            inst = label_ids.astype(np.uint16)  # Cityscapes: id * 1000 + k for things
            things = [o for o in s["objects"] if o["train_id"] in CITYSCAPES_INSTANCE_TRAIN_IDS]
            for k, obj in enumerate(sorted(things, key=lambda o: o["instance"])):
                inst[s["instance"] == obj["instance"]] = int(to_label_id[obj["train_id"]]) * 1000 + k
            _write_png(gt / f"{stem}_gtFine_instanceIds.png", inst)
            n += 1
    return n


def _det_frame(name: str, objects: list[dict]) -> dict:
    labels = []
    for obj in objects:
        category = DET_CATEGORY.get(obj["train_id"])
        x1, y1, x2, y2 = obj["box"]
        if category is None or obj["visible"] < MIN_BOX_PIXELS or x2 <= x1 or y2 <= y1:
            continue
        labels.append({
            "id": str(obj["instance"]), "category": category,
            "attributes": {"occluded": obj["visible"] < 0.95 * obj["unoccluded"],
                           "truncated": obj["truncated"], "trafficLightColor": "NA"},
            # BDD100K boxes are inclusive pixel coordinates (width = x2 - x1 + 1)
            "box2d": {"x1": float(x1), "y1": float(y1), "x2": float(x2), "y2": float(y2)},
        })
    return {"name": name, "attributes": {"weather": "clear", "scene": "city street",
                                         "timeofday": "daytime"},
            "timestamp": 10000, "labels": labels}


def write_bdd100k_images(world: SyntheticWorld, root: Path, progress=True) -> int:
    n = 0
    for split, count in world.preset.images["bdd100k"].items():
        frames = []
        for i in tqdm(range(count), desc=f"bdd100k {split}", disable=None if progress else True):
            name = _image_name(world.seed, split, i)
            s = world.labelled_image("bdd100k", split, i)
            img10k = root / "images" / "10k" / split / f"{name}.jpg"
            _write_rgb(img10k, s["image"])
            img100k = root / "images" / "100k" / split / f"{name}.jpg"
            img100k.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(img10k, img100k)
            _write_png(root / "labels" / "sem_seg" / "masks" / split / f"{name}.png",
                       s["label"])
            frames.append(_det_frame(f"{name}.jpg", s["objects"]))
            n += 1
        det = root / "labels" / "det_20" / f"det_{split}.json"
        det.parent.mkdir(parents=True, exist_ok=True)
        det.write_text(json.dumps(frames, indent=1))
    return n


def _image_name(seed: int, split: str, index: int) -> str:
    return hex_name(seed + 7_000_003, split, index)


def write_bdd100k_videos(world: SyntheticWorld, root: Path, progress=True,
                         flow: bool = True) -> int:
    H, W = world.preset.video_size
    T = world.num_frames
    for spec in tqdm(world.videos, desc="bdd100k videos", disable=None if progress else True):
        path = root / "videos" / spec.split / f"{spec.name}.mov"
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), world.fps, (W, H))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write {path} (no mp4v encoder?)")
        fwd = np.zeros((T - 1, H, W, 2), np.int16)
        bwd = np.zeros_like(fwd)
        occ_fwd = np.zeros((T - 1, H, W), bool)
        occ_bwd = np.zeros_like(occ_fwd)
        for t in range(T):
            if flow and t + 1 < T:
                p = world.frame_pair(spec.name, t, 1)
                fwd[t], bwd[t] = _quantize(p["flow_fwd"]), _quantize(p["flow_bwd"])
                occ_fwd[t], occ_bwd[t] = p["occlusion_fwd"], p["occlusion_bwd"]
                image = p["image1"]
            else:
                image = world.frame(spec.name, t)["image"]
            writer.write(np.ascontiguousarray(image[:, :, ::-1]))
        writer.release()
        if flow:
            out = root / "flow_gt" / spec.split / f"{spec.name}.npz"
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(out, flow_fwd=fwd, flow_bwd=bwd, occlusion_fwd=occ_fwd,
                                occlusion_bwd=occ_bwd, scale=np.float32(1 / FLOW_SCALE),
                                fps=np.float32(world.fps))
    return len(world.videos)


def _quantize(flow: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(flow * FLOW_SCALE), -32767, 32767).astype(np.int16)


def write_ade20k(world: SyntheticWorld, root: Path, progress=True) -> int:
    lut = _lut(ADE_ID, 0)
    n = 0
    for split, count in world.preset.images["ade20k"].items():
        folder = ADE_SPLITS[split]
        prefix = "ADE_train" if split == "train" else "ADE_val"
        for i in tqdm(range(count), desc=f"ade20k {split}", disable=None if progress else True):
            s = world.labelled_image("ade20k", split, i)
            stem = f"{prefix}_{i + 1:08d}"
            base = root / "ADEChallengeData2016"
            _write_rgb(base / "images" / folder / f"{stem}.jpg", s["image"])
            _write_png(base / "annotations" / folder / f"{stem}.png", lut[s["label"]])
            n += 1
    return n


WRITERS = {"cityscapes": write_cityscapes, "bdd100k": write_bdd100k_images,
           "videos": write_bdd100k_videos, "ade20k": write_ade20k}


def conditions_summary(world: SyntheticWorld) -> dict:
    """How often each time of day and weather occurs among the world's videos and stills
    (world 2; empty in world 1), and each video's conditions."""
    if world.version == 1:
        return {}
    videos = {v.name: world.conditions("video", v.split, v.index) for v in world.videos}
    stills = [world.conditions(d, split, i) for d, splits in world.preset.images.items()
              for split, n in splits.items() for i in range(n)]
    counts: dict = {"time_of_day": {}, "weather": {}}
    for c in [*videos.values(), *stills]:
        for key in counts:
            counts[key][c[key]] = counts[key].get(c[key], 0) + 1
    return {**counts, "videos": videos}


def write_world(out: str | Path, preset: str = "tiny", seed: int = 0,
                parts=tuple(WRITERS), progress: bool = True,
                version: int = DEFAULT_VERSION) -> dict:
    """Generate every requested part under `out`; returns the manifest (also written)."""
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    unknown = set(parts) - set(WRITERS)
    if unknown:
        raise KeyError(f"unknown parts {sorted(unknown)}; known: {', '.join(WRITERS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld(preset, seed, version=version)
    roots = {"cityscapes": out / "cityscapes", "bdd100k": out / "bdd100k",
             "videos": out / "bdd100k", "ade20k": out / "ade20k"}
    seconds, counts = {}, {}
    for part in parts:
        t0 = time.perf_counter()
        counts[part] = WRITERS[part](world, roots[part], progress=progress)
        seconds[part] = round(time.perf_counter() - t0, 3)
    manifest = {
        "format": "flowssl-synth/1", "synthetic": True, "preset": preset, "seed": seed,
        "world_version": world.version, "world": VERSIONS[world.version],
        "video_size": list(world.preset.video_size), "fps": world.fps,
        "frames_per_video": world.num_frames,
        "videos": [{"name": v.name, "split": v.split, "index": v.index} for v in world.videos]
        if "videos" in parts else [],
        "counts": counts, "seconds": seconds,
        "ignore_index": IGNORE_INDEX, "det_classes": list(BDD100K_DET_CLASSES),
        "conditions": conditions_summary(world),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
