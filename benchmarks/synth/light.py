"""World v2's shading: linear radiance from albedo under the capture's light (sun with cast
shadows, sky, street lamps and headlights at night, emissive windows and vehicle lights),
wet-road sky reflections, snow cover and haze, then the camera (exposure, white balance,
tone curve, encoding gamma, per-frame sensor noise) to 8-bit sRGB-like values.

Everything but the sensor noise is a function of the surface point and the capture, so a
point keeps its colour between frames (up to moving shadows and headlights) and the
world's flow stays exact.
"""
from __future__ import annotations

import numpy as np

from . import scene as S
from . import texture as T
from .render import GROUND_ID, SKY_ID, box_surface
from .style import M_BRICK, M_GLASSWALL, M_PLASTER, M_WOOD

SHADOW_CELL = 0.08  # metres, the shadow map's cell on the plane facing the sun
SHADOW_RANGE = 150.0  # metres: farther points are not tested for shadows
# one unit of irradiance is about 3,000 lux (clear-day sky light ~0.8, sun ~3): a street
# lamp gives ~10-30 lux on the road below it (EN 13201 classes), dipped headlights ~10-20
# lux at 10-20 m
LAMP_POWER, HEADLIGHT_POWER = 0.15, 6.0


def to_linear(srgb255: np.ndarray) -> np.ndarray:
    return (np.clip(srgb255, 0, 255) / 255.0) ** 2.2


def srgb_encode(y: np.ndarray, gamma: float) -> np.ndarray:
    """The sRGB transfer curve (IEC 61966-2-1: linear toe, then a power) with its exponent
    replaced by `gamma` (2.4 in the standard), so cameras differ in their tone curve."""
    y = np.clip(y, 0, 1)
    return np.where(y <= 0.0031308, 12.92 * y, 1.055 * y ** (1 / gamma) - 0.055)


def _basis(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    helper = np.array([1.0, 0, 0]) if abs(d[0]) < 0.9 else np.array([0, 0, 1.0])
    e1 = np.cross(d, helper)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(d, e1)


def shadowed(lo: np.ndarray, hi: np.ndarray, points: np.ndarray, sun: np.ndarray) -> np.ndarray:
    """bool[M]: points [M, 3] that a box (lo/hi [N, 3]) hides from the sun, by a shadow map
    (an orthographic depth map along the sun direction) with SHADOW_CELL cells."""
    out = np.zeros(len(points), bool)
    if len(points) == 0 or len(lo) == 0:
        return out
    e1, e2 = _basis(sun)
    a, b, s = points @ e1, points @ e2, points @ sun
    cell = SHADOW_CELL
    a0, b0 = a.min(), b.min()
    na, nb = int((a.max() - a0) / cell) + 2, int((b.max() - b0) / cell) + 2
    while na * nb > 6_000_000:
        cell *= 1.5
        na, nb = int((a.max() - a0) / cell) + 2, int((b.max() - b0) / cell) + 2
    far = s.max() + 1000.0
    smap = np.full((na, nb), -np.inf)
    corners = np.stack(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij"), -1).reshape(8, 3)
    for i in range(len(lo)):
        pts = np.where(corners, hi[i], lo[i])
        if (pts @ sun).max() <= s.min():
            continue  # entirely behind (away from the sun of) every query point
        ca, cb = pts @ e1, pts @ e2
        i0, i1 = max(int((ca.min() - a0) / cell), 0), min(int((ca.max() - a0) / cell) + 2, na)
        j0, j1 = max(int((cb.min() - b0) / cell), 0), min(int((cb.max() - b0) / cell) + 2, nb)
        if i0 >= i1 or j0 >= j1:
            continue
        ga = a0 + (np.arange(i0, i1) + 0.5) * cell
        gb = b0 + (np.arange(j0, j1) + 0.5) * cell
        origin = (ga[:, None, None] * e1 + gb[None, :, None] * e2 + far * sun)
        inv = 1.0 / np.where(np.abs(sun) > 1e-12, -sun, 1e-12)
        t1, t2 = (lo[i] - origin) * inv, (hi[i] - origin) * inv
        tn, tf = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
        hit = tn <= tf
        sub = smap[i0:i1, j0:j1]
        np.maximum(sub, np.where(hit, far - tn, -np.inf), out=sub)
    ia = np.clip(((a - a0) / cell).astype(int), 0, na - 1)
    ib = np.clip(((b - b0) / cell).astype(int), 0, nb - 1)
    return s < smap[ia, ib] - 3 * cell


def sky_radiance(c, directions: np.ndarray) -> np.ndarray:
    d = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
    elevation = np.arcsin(np.clip(d[..., 1], -1, 1))
    t = np.clip(elevation / 0.6, 0, 1)[..., None] ** 0.7
    out = (1 - t) * c.sky_horizon + t * c.sky_zenith
    azimuth = np.arctan2(d[..., 0], d[..., 2])
    n = T.fbm(azimuth * 9, elevation * 18, 11 + c.seed % 1000, 0.02, period=1.5, octaves=3)
    cover = np.clip((n + c.cloud - 0.5) * 4, 0, 1)[..., None]
    cloud = np.full(3, float(np.dot(c.sky_horizon, [0.2126, 0.7152, 0.0722]))) * 1.1
    out = out * (1 - cover) + cloud * cover
    if c.sun_rgb.any():
        angle = np.arccos(np.clip(d @ c.sun, -1, 1))[..., None]
        out = out + c.sun_rgb * (2.0 * np.exp(-angle / 0.03) + 0.12 * np.exp(-angle / 0.3))
    return out


def _window_mask(uv, height, footprint, seed):
    """Windows of a building face: per-building spacing and size from its texture seed."""
    a = uv[:, 0]
    seed = np.asarray(seed, np.int64)
    one = np.ones_like(seed)
    spacing = 2.2 + 1.8 * T._hash01(seed, 1 * one, 7)
    width = spacing * (0.3 + 0.3 * T._hash01(seed, 2 * one, 7))
    row = 2.8 + 0.8 * T._hash01(seed, 3 * one, 7)
    tall = row * (0.35 + 0.2 * T._hash01(seed, 4 * one, 7))
    win = (T.stripes(a - 0.5, spacing, width, footprint) *
           T.stripes(height - 1.0, row, tall, footprint) * (height > 1.0))
    cell = T._hash01(np.floor((a - 0.5) / spacing), np.floor((height - 1.0) / row), seed)
    return win, cell


def box_albedo(material: int, base, uv, height, extent, footprint, seed, cls):
    """sRGB albedo [N, 3] (0-255) of box points of one material, world v2's materials
    added to world 1's; buildings of every material get windows."""
    a, b = uv[:, 0], uv[:, 1]
    n = T.fbm(a, b, seed, footprint, period=1.0)
    if material == M_BRICK:
        course = np.floor(height / 0.075)
        mortar = np.maximum(T.stripes(height, 0.075, 0.012, footprint),
                            T.stripes(a + 0.11 * (course % 2), 0.22, 0.012, footprint))
        brick = T._hash01(np.floor((a + 0.11 * (course % 2)) / 0.22), course, seed)
        vary = np.where(footprint < 0.05, brick - 0.5, 0.0) * 0.3
        wall = base * (1 + 0.2 * n[:, None] + vary[:, None])
        out = wall * (1 - mortar[:, None]) + np.array([195.0, 190, 180]) * mortar[:, None]
    elif material == M_PLASTER:
        out = base * (1 + 0.25 * n[:, None])
    elif material == M_WOOD:
        planks = T.stripes(height, 0.18, 0.015, footprint)
        grain = T.fbm(a * 6, b * 0.5, seed + 3, footprint, period=0.5)
        out = base * (1 + 0.3 * grain[:, None] - 0.35 * planks[:, None])
    elif material == M_GLASSWALL:
        mullion = np.maximum(T.stripes(a, 1.5, 0.08, footprint),
                             T.stripes(height, 1.5, 0.08, footprint))
        glass = base * (0.7 + 0.8 * T.fbm(a, b, seed + 1, footprint, 0.7)[:, None])
        out = glass * (1 - mullion[:, None]) + np.array([60.0, 60, 62]) * mullion[:, None]
    else:
        out = T.box_color(material, base, uv, height, extent, footprint, seed)
    if cls == S.BUILDING and material != M_GLASSWALL:
        win, _ = _window_mask(uv, height, footprint, seed // 8)
        glass = np.array([45.0, 55, 65]) + 60 * T.fbm(a, b, seed + 1, footprint, 0.7)[:, None]
        out = out * (1 - win[:, None]) + glass * win[:, None]
    return out


def _emission(scene, idx, f, uv, height, extent, footprint, lamps_on):
    """Linear emitted radiance [N, 3] of box points (index idx into the boxes, face f)."""
    st = scene.style
    boxes = scene.boxes
    out = np.zeros((len(idx), 3))
    cls = boxes.cls[idx]
    light = cls == S.LIGHT  # the lit lamp of a traffic light glows day and night
    if light.any():
        e = extent[light]
        lit = np.abs(np.mod(height[light], e / 3) - e / 6) < e / 9
        out[light] = np.where(lit[:, None], to_linear(T.box_color(
            S.M_LIGHT, boxes.color[idx[light]], uv[light], height[light], e, footprint[light],
            0)) * 2.0, 0.0)
    if not lamps_on:
        return out
    lamp = st.lamp_box[idx] & (height > extent - 0.35)
    out[lamp] = st_lamp_colour(st) * 0.5
    build = (cls == S.BUILDING) & (boxes.material[idx] != M_GLASSWALL) & (f // 2 != 1)
    if build.any():
        seed = boxes.tex_seed[idx[build]]
        win, cell = _window_mask(uv[build], height[build], footprint[build], seed)
        lit = (cell < st.window_lit) * win
        out[build] += lit[:, None] * np.array([1.0, 0.8, 0.5]) * 0.01
    kind = st.vehicle_light[idx]
    car = (kind > 0) & (f == 4)
    if car.any():
        rel = height[car] / np.maximum(extent[car], 1e-9)
        width = boxes.hi[idx[car], 0] - boxes.lo[idx[car], 0]
        a = uv[car, 0]
        side = np.minimum(a, width - a)
        on = (rel > 0.25) & (rel < 0.42) & (side > 0.08) & (side < 0.4)
        colour = np.where((kind[car] == 1)[:, None], np.array([1.0, 1.0, 0.95]) * 0.5,
                          np.array([1.0, 0.05, 0.02]) * 0.1)
        out[car] += on[:, None] * colour
    return out


def st_lamp_colour(st) -> np.ndarray:
    return (np.array([1.0, 0.72, 0.38]) if st.conditions.seed % 3 else
            np.array([0.9, 0.93, 1.0]))


def ground_albedo(points, cls, footprint, seed, st) -> np.ndarray:
    """sRGB albedo (0-255) of ground points [N, 3] in world v2's per-scene ground style."""
    x, z = points[:, 0], points[:, 2]
    out = np.empty((len(x), 3))
    noise = T.fbm(x, z, seed, footprint, period=1.5)
    road = cls == S.ROAD
    if road.any():
        fp = footprint[road]
        marks = np.maximum(T.stripes(x[road] + 0.06, 1e6, 0.12, fp) *
                           T.stripes(z[road], 6.0, 3.0, fp),
                           T.stripes(np.abs(x[road]) - S.LANE + 0.06, 1e6, 0.12, fp))
        grey = st.road_grey * (1 + 0.5 * noise[road])
        out[road] = (grey[:, None] * st.road_tint * (1 - marks[:, None])
                     + st.marking * marks[:, None])
    side = cls == S.SIDEWALK
    if side.any():
        kind, colour = st.sidewalk
        fp = footprint[side]
        if kind == "pavers":
            joints = np.maximum(T.stripes(x[side], 0.2, 0.02, fp),
                                T.stripes(z[side], 0.1, 0.02, fp))
        elif kind == "concrete":
            joints = np.maximum(T.stripes(x[side], 1.2, 0.03, fp),
                                T.stripes(z[side], 1.2, 0.03, fp))
        else:
            joints = np.zeros(side.sum())
        out[side] = colour * ((1 + 0.4 * noise[side]) * (1 - 0.3 * joints))[:, None]
    grass = cls == S.TERRAIN
    if grass.any():
        patch = T.fbm(x[grass], z[grass], seed + 5, footprint[grass], period=6.0)
        out[grass] = st.terrain * (1 + 0.7 * noise[grass] + 0.5 * patch)[:, None]
    return out


def shade(scene, cam, rays, depth, prim, face, points, label, lo_all, hi_all,
          time: float) -> np.ndarray:
    """uint8[H, W, 3] image of a world v2 render."""
    st = scene.style
    c = st.conditions
    H, W = prim.shape
    footprint = np.where(np.isfinite(depth), depth, 1e6) / cam.focal
    albedo = np.zeros((H, W, 3))
    normal = np.zeros((H, W, 3))
    emission = np.zeros((H, W, 3))
    g = prim == GROUND_ID
    albedo[g] = ground_albedo(points[g], label[g], footprint[g], scene.ground_seed, st)
    normal[g] = (0, 1.0, 0)
    boxes = scene.boxes
    is_box, idx, f, uv, local, extent = box_surface(prim, face, points, lo_all, hi_all)
    fp = footprint[is_box]
    colours = np.empty((len(idx), 3))
    keys = boxes.material[idx] * 32 + boxes.cls[idx]
    for key in np.unique(keys):
        sel = keys == key
        m, k = int(key // 32), int(key % 32)
        seed = boxes.tex_seed[idx[sel]] * 8 + f[sel]
        colours[sel] = box_albedo(m, boxes.color[idx[sel]], uv[sel], local[sel, 1],
                                  extent[sel], fp[sel], seed, k)
    albedo[is_box] = colours
    normal[is_box] = T.FACE_NORMALS[f]
    emission[is_box] = _emission(scene, idx, f, uv, local[:, 1], extent, fp, c.lamps)
    solid = g | is_box
    lin = to_linear(albedo)
    if c.snow > 0:
        cover = np.clip(c.snow * 1.4 + T.fbm(points[..., 0], points[..., 2], 77, footprint,
                                              period=2.0) * 1.5 - 0.4, 0, 1)
        on_road = (label == S.ROAD) & g
        cover = np.where(on_road, cover * 0.45, cover)
        cover = np.where(solid & (normal[..., 1] > 0.5), cover, 0.0)
        lin = lin * (1 - cover[..., None]) + 0.8 * cover[..., None]
    wet_road = (label == S.ROAD) & g if c.wet > 0 else np.zeros((H, W), bool)
    lin[wet_road] *= 1 - 0.45 * c.wet

    irradiance = np.zeros((H, W, 3))
    n_s = normal[solid]
    irradiance[solid] = c.ambient_rgb * (0.55 + 0.45 * n_s[:, 1:2])
    if c.sun_rgb.any():
        facing = np.clip(n_s @ c.sun, 0, None)
        near = (facing > 0) & (depth[solid] < SHADOW_RANGE)
        lit = facing.copy()
        pts = points[solid]
        dark = shadowed(lo_all, hi_all, pts[near] + n_s[near] * 0.02, c.sun)
        lit[np.flatnonzero(near)[dark]] = 0.0
        irradiance[solid] += lit[:, None] * c.sun_rgb
    if c.lamps:
        pts, extra = points[solid], np.zeros((solid.sum(), 3))
        if len(st.lamps):
            close = st.lamps[np.abs(st.lamps[:, 2] - cam.center[2] - 40) < 90]
            colour = st_lamp_colour(st)
            for lamp in close:
                d = lamp - pts
                dist2 = (d * d).sum(-1)
                cos = np.clip((n_s * d).sum(-1) / np.sqrt(dist2 + 1e-9), 0, None)
                extra += (LAMP_POWER * cos / (dist2 + 1.0))[:, None] * colour
        head = cam.center + np.array([0, -0.6, 0.5])
        forward = cam.rotation[:, 2]
        d = head - pts
        dist2 = (d * d).sum(-1)
        unit = d / np.sqrt(dist2 + 1e-9)[:, None]
        cone = np.clip((-(unit @ forward) - 0.88) / 0.08, 0, 1) ** 2
        cos = np.clip((n_s * unit).sum(-1), 0, None)
        extra += (HEADLIGHT_POWER * cone * cos / (dist2 + 1.0))[:, None] * np.array(
            [1.0, 0.97, 0.9])
        irradiance[solid] += extra
    radiance = lin * irradiance + emission
    sky = prim == SKY_ID
    radiance[sky] = sky_radiance(c, rays[sky])
    if wet_road.any():
        r = rays[wet_road] / np.linalg.norm(rays[wet_road], axis=-1, keepdims=True)
        fresnel = 0.02 + 0.98 * (1 - np.clip(-r[:, 1], 0, 1)) ** 5
        mirror = r * np.array([1.0, -1.0, 1.0])
        radiance[wet_road] += (c.wet * fresnel)[:, None] * sky_radiance(c, mirror)
    airlight = c.sky_horizon * 0.9
    transmit = np.exp(-c.haze_beta * np.where(np.isfinite(depth), depth, 3000.0))[..., None]
    radiance = radiance * transmit + airlight * (1 - transmit)

    signal = radiance * c.exposure * c.white_balance
    encoded = srgb_encode(1 - np.exp(-signal), c.gamma) * 255.0
    rng = np.random.default_rng([c.seed, int(round(time * 1e4))])
    encoded += rng.normal(0, c.noise, encoded.shape)
    return np.clip(np.rint(encoded), 0, 255).astype(np.uint8)

