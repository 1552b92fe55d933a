"""Ray casting of a scene, and exact ground-truth flow and occlusion between two renders.

Primitive ids per pixel: SKY_ID (-1), GROUND_ID (0), box i -> i + 1. Boxes are convex and
rigid, so a surface point is visible in a second frame iff it lies in view, its own box
does not hide it (checked exactly by casting a ray at it) and nothing nearer covers the
pixel it lands on (checked against the second frame's depth buffer).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import scene as S
from . import texture as T
from .camera import NEAR, Camera

SKY_ID, GROUND_ID = -1, 0
FAR = 250.0  # boxes beyond this depth are not drawn (they would be sub-pixel)


@dataclass
class Render:
    camera: Camera
    time: float
    depth: np.ndarray  # float64[H, W], inf for sky
    prim: np.ndarray  # int32[H, W]
    face: np.ndarray  # int8[H, W], 0..5 = -x, +x, -y, +y, -z, +z faces, -1 otherwise
    coverage: np.ndarray  # int64[N] pixels each box would cover with nothing in front
    label: np.ndarray  # uint8[H, W] Cityscapes train id
    instance: np.ndarray  # int32[H, W] object id, 0 for stuff
    image: np.ndarray  # uint8[H, W, 3] RGB


def _slab(origin, rays, lo, hi):
    """Ray/box entry and exit parameters for rays [..., 3] and boxes lo/hi [..., 3]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / np.where(np.abs(rays) > 1e-12, rays, 1e-12)
    t1 = (lo - origin) * inv
    t2 = (hi - origin) * inv
    tmin = np.minimum(t1, t2)
    return tmin.max(-1), np.maximum(t1, t2).min(-1), tmin.argmax(-1)


def _screen_rect(cam: Camera, lo, hi):
    """Pixel rectangle (v0, v1, u0, u1) that contains a box's image, or None if unseen."""
    c = cam.center
    lo = lo.copy()
    lo[2] = max(lo[2], c[2] + 1.0)  # nothing within 1 m ahead is ever in the frustum here
    if lo[2] >= hi[2]:
        return None
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])])
    u, v, d = cam.project(corners)
    if d.max() <= NEAR or d.min() > FAR:
        return None
    if d.min() <= NEAR:
        return 0, cam.height, 0, cam.width
    u0, u1 = int(np.floor(u.min())), int(np.ceil(u.max())) + 1
    v0, v1 = int(np.floor(v.min())), int(np.ceil(v.max())) + 1
    u0, v0 = max(u0, 0), max(v0, 0)
    u1, v1 = min(u1, cam.width), min(v1, cam.height)
    if u0 >= u1 or v0 >= v1:
        return None
    return v0, v1, u0, u1


def ground_class(scene: S.Scene, x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    cls = np.where(ax < S.ROAD_HALF, S.ROAD, S.SIDEWALK)
    outer = np.where(x < 0, scene.outer_class[0], scene.outer_class[1])
    return np.where(ax < S.ROAD_HALF + scene.sidewalk, cls, outer).astype(np.uint8)


def render(scene: S.Scene, cam: Camera, time: float) -> Render:
    H, W = cam.height, cam.width
    rays, c = cam.rays, cam.center
    depth = np.full((H, W), np.inf)
    prim = np.full((H, W), SKY_ID, np.int32)
    face = np.full((H, W), -1, np.int8)
    down = rays[..., 1] < -1e-12
    tg = np.where(down, -c[1] / np.where(down, rays[..., 1], -1.0), np.inf)
    ground = down & (tg > NEAR)
    depth[ground], prim[ground] = tg[ground], GROUND_ID

    boxes = scene.boxes
    lo_all, hi_all = boxes.at(time)
    coverage = np.zeros(len(boxes), np.int64)
    for i in range(len(boxes)):
        rect = _screen_rect(cam, lo_all[i], hi_all[i])
        if rect is None:
            continue
        v0, v1, u0, u1 = rect
        r = rays[v0:v1, u0:u1]
        tn, tf, axis = _slab(c, r, lo_all[i], hi_all[i])
        hit = (tn <= tf) & (tn > NEAR)
        coverage[i] = int(hit.sum())
        sub_d = depth[v0:v1, u0:u1]
        closer = hit & (tn < sub_d)
        if not closer.any():
            continue
        sub_d[closer] = tn[closer]
        prim[v0:v1, u0:u1][closer] = i + 1
        entering_hi = np.take_along_axis(r, axis[..., None], -1)[..., 0] < 0
        face[v0:v1, u0:u1][closer] = (2 * axis + entering_hi)[closer]

    label = np.full((H, W), S.SKY, np.uint8)
    instance = np.zeros((H, W), np.int32)
    is_box = prim > 0
    label[is_box] = boxes.cls[prim[is_box] - 1]
    instance[is_box] = boxes.instance[prim[is_box] - 1]
    points = c + np.where(np.isfinite(depth), depth, 0.0)[..., None] * rays
    label[prim == GROUND_ID] = ground_class(scene, points[prim == GROUND_ID][:, 0])
    if scene.style is None:
        image = _shade(scene, cam, rays, depth, prim, face, points, label, lo_all, hi_all)
    else:
        from .light import shade
        image = shade(scene, cam, rays, depth, prim, face, points, label, lo_all, hi_all, time)
    return Render(cam, time, depth, prim, face, coverage, label, instance, image)


def box_surface(prim, face, points, lo_all, hi_all):
    """Where each box pixel lies on its box: (is_box [H, W], box index [N], face [N],
    surface coordinates uv [N, 2] in metres, position local to the box's low corner [N, 3],
    box height [N])."""
    is_box = prim > 0
    idx = prim[is_box] - 1
    local = points[is_box] - lo_all[idx]
    f = face[is_box].astype(np.int64)
    axis = f // 2
    # surface coordinates: the two axes other than the face normal (height is local y)
    first = np.where(axis == 0, local[:, 2], local[:, 0])
    second = np.where(axis == 1, local[:, 2], local[:, 1])
    return is_box, idx, f, np.stack([first, second], -1), local, (hi_all - lo_all)[idx, 1]


def _shade(scene, cam, rays, depth, prim, face, points, label, lo_all, hi_all) -> np.ndarray:
    H, W = prim.shape
    out = np.zeros((H, W, 3))
    footprint = np.where(np.isfinite(depth), depth, 1e6) / cam.focal
    sky = prim == SKY_ID
    out[sky] = T.sky_color(rays[sky])
    g = prim == GROUND_ID
    out[g] = T.ground_color(points[g], label[g], footprint[g], scene.ground_seed)
    boxes = scene.boxes
    is_box, idx, f, uv, local, extent = box_surface(prim, face, points, lo_all, hi_all)
    colors = np.empty((len(idx), 3))
    fp = footprint[is_box]
    for m in np.unique(boxes.material[idx]):
        sel = boxes.material[idx] == m
        seed = boxes.tex_seed[idx[sel]] * 8 + f[sel]
        colors[sel] = T.box_color(int(m), boxes.color[idx[sel]], uv[sel], local[sel, 1],
                                  extent[sel], fp[sel], seed)
    out[is_box] = colors * T.FACE_SHADE[f][:, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def flow_between(scene: S.Scene, a: Render, b: Render) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth flow from render `a` to render `b` and occlusion of `a`'s pixels.

    Returns flow float32[H, W, 2] (x first, pixels; a(p) ~ b(p + flow(p))) and
    occlusion bool[H, W] (True where p has no correspondence in b: hidden, or out of view).
    """
    H, W = a.prim.shape
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    sky = a.prim == SKY_ID
    points = a.camera.rays.copy()
    points[~sky] = a.camera.center + a.depth[~sky][:, None] * a.camera.rays[~sky]
    u2, v2, visible = follow(scene, a.time, points.reshape(-1, 3), a.prim.reshape(-1), b)
    flow = np.stack([u2.reshape(H, W) - u, v2.reshape(H, W) - v], -1).astype(np.float32)
    return flow, ~visible.reshape(H, W)


def follow(scene: S.Scene, time: float, points: np.ndarray, prim: np.ndarray,
           b: Render) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where surface points seen at `time` are in render `b`, and whether `b` sees them.

    points float64[M, 3]: world positions at `time` (for prim SKY_ID: ray directions, points
    at infinity); prim int[M]: the primitive each lies on (boxes move with their velocity).
    Returns u, v float64[M] (pixels) and visible bool[M]: in view, not hidden by its own box
    (checked exactly by casting a ray at it) and not covered by anything nearer in `b`.
    """
    H, W = b.prim.shape
    cam_b = b.camera
    u2, v2 = np.empty(len(prim)), np.empty(len(prim))
    z2 = np.full(len(prim), np.inf)
    sky = prim == SKY_ID
    u2[sky], v2[sky], z2[sky] = cam_b.project_directions(points[sky])

    solid = ~sky
    pid = prim[solid]
    boxes = scene.boxes
    vel = np.zeros((len(pid), 3))
    on_box = pid > 0
    vel[on_box] = boxes.vel[pid[on_box] - 1]
    moved = points[solid] + vel * (b.time - time)
    u2[solid], v2[solid], z2[solid] = cam_b.project(moved)

    in_view = (z2 > NEAR) & (u2 >= -0.5) & (u2 <= W - 0.5) & (v2 >= -0.5) & (v2 <= H - 0.5)
    ri = np.clip(np.rint(v2), 0, H - 1).astype(np.int64)
    ci = np.clip(np.rint(u2), 0, W - 1).astype(np.int64)
    seen_prim = b.prim[ri, ci]
    seen_depth = b.depth[ri, ci]

    visible = np.zeros(len(prim), bool)
    visible[sky] = seen_prim[sky] == SKY_ID
    # a point of a convex box is hidden by its own box iff a ray at it enters earlier
    self_visible = np.ones(len(pid), bool)
    if on_box.any():
        lo_b, hi_b = boxes.at(b.time)
        target = moved[on_box]
        ray = (target - cam_b.center) / z2[solid][on_box][:, None]
        entry, _, _ = _slab(cam_b.center, ray, lo_b[pid[on_box] - 1], hi_b[pid[on_box] - 1])
        self_visible[on_box] = entry >= z2[solid][on_box] * (1 - 1e-6) - 1e-6
    zs = z2[solid]
    unobstructed = (seen_prim[solid] == pid) | (seen_depth[solid] >= zs * (1 - 1e-3))
    visible[solid] = self_visible & unobstructed
    return u2, v2, visible & in_view
