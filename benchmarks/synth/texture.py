"""Procedural textures evaluated on surface coordinates (metres), so a surface point has
the same colour in every frame: brightness constancy holds and flow is estimable.

Detail finer than two pixels is faded out using the pixel footprint (metres per pixel),
a cheap stand-in for mip-mapping that keeps distant surfaces from aliasing.
"""
from __future__ import annotations

import numpy as np

from . import scene as S

SUN = np.array([-0.35, 0.8, -0.5]) / np.linalg.norm([-0.35, 0.8, -0.5])


def _hash01(ix: np.ndarray, iy: np.ndarray, seed) -> np.ndarray:
    h = (ix.astype(np.int64) * 374761393 + iy.astype(np.int64) * 668265263
         + np.asarray(seed, np.int64) * 1442695041) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return h.astype(np.float64) / 4294967296.0


def value_noise(x: np.ndarray, y: np.ndarray, seed) -> np.ndarray:
    """Smooth lattice noise in [0, 1) with unit feature size."""
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    sx, sy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    a = _hash01(x0, y0, seed)
    b = _hash01(x0 + 1, y0, seed)
    c = _hash01(x0, y0 + 1, seed)
    d = _hash01(x0 + 1, y0 + 1, seed)
    return (a + (b - a) * sx) + ((c + (d - c) * sx) - (a + (b - a) * sx)) * sy


def fbm(x, y, seed, footprint, period=2.0, octaves=4) -> np.ndarray:
    """Fractal noise around 0 (roughly [-0.5, 0.5]); octaves finer than 2 px fade out."""
    out = np.zeros_like(x)
    amp = 0.5
    for k in range(octaves):
        weight = np.clip(period / np.maximum(footprint, 1e-9) / 2.0 - 1.0, 0.0, 1.0)
        out += amp * weight * (value_noise(x / period, y / period, seed + 7919 * k) - 0.5)
        period, amp = period / 2.0, amp * 0.55
    return out


def stripes(coord, period, width, footprint) -> np.ndarray:
    """1 on lines of `width` every `period` metres, blended to their coverage when small."""
    on = (np.mod(coord, period) < width).astype(np.float64)
    blend = np.clip(width / np.maximum(footprint, 1e-9) - 0.5, 0.0, 1.0)
    return blend * on + (1 - blend) * (width / period)


def sky_color(directions: np.ndarray) -> np.ndarray:
    d = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
    elevation = np.arcsin(np.clip(d[..., 1], -1, 1))
    azimuth = np.arctan2(d[..., 0], d[..., 2])
    t = np.clip(elevation / 0.6, 0, 1)[..., None]
    base = (1 - t) * np.array([205.0, 218, 232]) + t * np.array([95.0, 140, 205])
    cloud = np.clip(fbm(azimuth * 9, elevation * 18, 11, 0.02, period=1.5, octaves=3) * 2.2,
                    0, 1)[..., None]
    return base * (1 - cloud) + cloud * 240.0


def ground_color(p: np.ndarray, cls: np.ndarray, footprint, seed: int) -> np.ndarray:
    """Road with lane markings, paved sidewalk, grassy terrain; p = world points [N, 3]."""
    x, z = p[:, 0], p[:, 2]
    out = np.empty((len(x), 3))
    noise = fbm(x, z, seed, footprint, period=1.5)
    road = cls == S.ROAD
    grey = 95 + 60 * noise[road]
    ax = np.abs(x[road])
    marks = np.maximum.reduce([
        stripes(x[road] + 0.06, 1e6, 0.12, footprint[road]) * stripes(z[road], 6.0, 3.0,
                                                                        footprint[road]),
        stripes(ax - S.LANE + 0.06, 1e6, 0.12, footprint[road]),
    ]) if road.any() else np.zeros(0)
    out[road] = (grey + (225 - grey) * marks)[:, None] * np.array([1.0, 1.0, 1.02])
    side = cls == S.SIDEWALK
    tiles = 1 - 0.25 * np.maximum(stripes(x[side], 0.6, 0.04, footprint[side]),
                                  stripes(z[side], 0.6, 0.04, footprint[side]))
    out[side] = ((165 + 70 * noise[side]) * tiles)[:, None] * np.array([1.0, 0.97, 0.93])
    grass = cls == S.TERRAIN
    g = noise[grass][:, None]
    out[grass] = np.array([105.0, 125, 60]) + g * np.array([90.0, 110, 40])
    return out * (0.55 + 0.45 * SUN[1])


def box_color(material: int, base: np.ndarray, face_uv: np.ndarray, height: np.ndarray,
              extent: np.ndarray, footprint: np.ndarray, seed: int) -> np.ndarray:
    """Colour of points on boxes of one material.

    face_uv: [N, 2] surface coordinates in metres on the hit face; height: [N] metres above
    the box bottom; extent: [N] box height; base: [N, 3] base colours.
    """
    a, b = face_uv[:, 0], face_uv[:, 1]
    n = fbm(a, b, seed, footprint, period=1.0)
    if material == S.M_FACADE:
        win = (stripes(a - 0.8, 3.0, 1.4, footprint) * stripes(height - 1.0, 3.2, 1.4, footprint)
               * (height > 1.0))
        wall = base * (1 + 0.5 * n[:, None])
        glass = np.array([55.0, 70, 90]) + 80 * fbm(a, b, seed + 1, footprint, 0.7)[:, None]
        return wall * (1 - win[:, None]) + glass * win[:, None]
    if material == S.M_FENCE:
        bars = stripes(a, 0.25, 0.06, footprint)
        return base * (0.75 + 0.5 * bars[:, None] + 0.3 * n[:, None])
    if material == S.M_SIGN:
        rim = ((np.minimum(np.minimum(a, b), 0.6) < 0.06) | (height > extent - 0.06))
        return np.where(rim[:, None], 235.0, base * (1 + 0.3 * n[:, None]))
    if material == S.M_LIGHT:
        lamp = np.floor(np.clip(height / np.maximum(extent, 1e-9), 0, 0.999) * 3).astype(int)
        colors = np.array([[60.0, 200, 80], [230, 180, 30], [220, 40, 30]])
        lit = (np.abs(np.mod(height, extent / 3) - extent / 6) < extent / 9)
        return np.where(lit[:, None], colors[lamp], base * (1 + 0.5 * n[:, None]))
    if material == S.M_FOLIAGE:
        leaves = fbm(a, b, seed, footprint, period=0.6, octaves=4)
        return base * (1 + 1.4 * leaves[:, None])
    if material == S.M_VEHICLE:
        rel = height / np.maximum(extent, 1e-9)
        glass = (rel > 0.6) & (rel < 0.92)
        wheel = rel < 0.22
        body = base * (1 + 0.25 * n[:, None])
        out = np.where(glass[:, None], np.array([40.0, 55, 70]) + 60 * n[:, None], body)
        return np.where(wheel[:, None], np.array([25.0, 25, 28]) + 30 * n[:, None], out)
    if material == S.M_CLOTH:
        rel = height / np.maximum(extent, 1e-9)
        legs = rel < 0.47
        head = rel > 0.87
        out = np.where(legs[:, None], base[:, ::-1] * 0.6, base)
        out = np.where(head[:, None], np.array([225.0, 180, 150]), out)
        return out * (1 + 0.3 * n[:, None])
    if material == S.M_BIKE:
        spokes = stripes(a + b, 0.3, 0.08, footprint)
        return base * (0.6 + 0.8 * spokes[:, None]) * (1 + 0.3 * n[:, None])
    return base * (1 + 0.6 * n[:, None])  # concrete, metal, bark


FACE_NORMALS = np.array([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1.0]])
FACE_SHADE = 0.55 + 0.45 * np.clip(FACE_NORMALS @ SUN, 0, None)
