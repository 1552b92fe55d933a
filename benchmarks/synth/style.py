"""World v2's appearance: every instance's material and colour drawn from wide distributions
that overlap across classes (a grey car, a grey wall, a grey pole and a grey building are
all common), so that colour or texture alone does not name a class.

`restyle` keeps a v1 scene's geometry and redraws its look from a second generator, so
world 1 stays bit-identical and the two worlds differ only in appearance and conditions.
Car paint: the global shares of the Axalta Global Automotive Color Popularity Report 2020
(white 38 %, black 19 %, grey 15 %, silver 10 %, blue 7 %, red 7 %, beige/brown 2 %,
green 1 %, yellow/gold 1 %), rounded as published.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import scene as S
from .conditions import Conditions, draw_conditions

M_BRICK, M_PLASTER, M_GLASSWALL, M_WOOD = 14, 15, 16, 17

CAR_PAINT = (((236, 236, 232), 38), ((24, 24, 27), 19), ((108, 110, 114), 15),
             ((182, 184, 188), 10), ((34, 60, 140), 7), ((168, 26, 26), 7),
             ((140, 112, 78), 2), ((32, 90, 52), 1), ((210, 170, 52), 1))
CAR_PAINT_COLOURS = tuple(c for c, _ in CAR_PAINT)
PLASTER = ((238, 234, 224), (214, 200, 172), (190, 186, 180), (150, 148, 146),
           (222, 196, 160), (200, 150, 130), (170, 190, 200), (180, 200, 170),
           (230, 210, 140), (120, 110, 100), (90, 92, 96))
BRICK = ((150, 70, 50), (120, 55, 40), (185, 150, 105), (110, 95, 85), (170, 100, 70))
PAINT = ((240, 240, 238), (60, 70, 110), (120, 125, 130), (150, 40, 35), (60, 90, 70),
         (200, 180, 130), (35, 35, 38), (140, 100, 60))
SIGN_COLOURS = ((200, 30, 30), (30, 70, 180), (230, 200, 40), (30, 130, 70), (235, 235, 235),
                (235, 120, 30), (110, 70, 40), (30, 30, 30))
POLE_COLOURS = ((130, 130, 135), (40, 70, 50), (35, 35, 38), (170, 172, 175), (100, 75, 50))
LIGHT_HOUSING = ((35, 35, 35), (60, 60, 62), (200, 170, 40), (40, 70, 50))
SEASON_FOLIAGE = {"summer": (70, 120, 45), "spring": (105, 150, 60), "autumn": (165, 105, 40),
                  "dry": (125, 120, 65), "bare": (95, 85, 75)}
SEASONS = {"summer": 0.4, "spring": 0.2, "autumn": 0.2, "dry": 0.1, "bare": 0.1}


@dataclass(frozen=True)
class Style:
    conditions: Conditions
    season: str
    road_grey: float  # asphalt albedo in [0, 255]
    road_tint: np.ndarray  # [3] multiplicative
    marking: np.ndarray  # [3] lane-marking colour
    sidewalk: tuple  # (kind, base colour [3]): "concrete", "pavers" or "asphalt"
    terrain: np.ndarray  # [3] grass / soil base colour
    window_lit: float  # share of windows lit when lamps are on
    lamps: np.ndarray  # float64[K, 3] street-lamp positions (pole tops)
    lamp_box: np.ndarray  # bool[N] boxes that are lamp poles (their top glows at night)
    vehicle_light: np.ndarray  # int8[N]: 0 none, 1 headlights, 2 tail lights (-z face)
    wooden: np.ndarray  # bool[N]: pole boxes drawn as wood


def _choose(rng, table):
    colours = [c for c, _ in table]
    p = np.asarray([w for _, w in table], float)
    return np.asarray(colours[rng.choice(len(colours), p=p / p.sum())], float)


def _one(rng, palette, jitter=18.0):
    c = np.asarray(palette[rng.integers(len(palette))], float)
    return np.clip(c + rng.uniform(-jitter, jitter, 3), 0, 255)


def _weighted(rng, options: dict):
    names = list(options)
    p = np.asarray(list(options.values()), float)
    return names[rng.choice(len(names), p=p / p.sum())]


def restyle(scene: S.Scene, seed) -> S.Scene:
    """The same scene with world v2's per-instance looks and capture conditions."""
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 2])
    boxes = scene.boxes
    n = len(boxes)
    material, color = boxes.material.copy(), boxes.color.copy()
    season = _weighted(rng, SEASONS)
    foliage = np.asarray(SEASON_FOLIAGE[season], float)
    by_instance: dict[int, np.ndarray] = {}
    lamp_box = np.zeros(n, bool)
    wooden = np.zeros(n, bool)
    vehicle_light = np.zeros(n, np.int8)
    urban = bool((boxes.cls == S.BUILDING).sum() > 8)
    conditions = draw_conditions(rng, urban)
    for i in range(n):
        cls, inst = int(boxes.cls[i]), int(boxes.instance[i])
        if cls == S.BUILDING:
            kind = _weighted(rng, {M_PLASTER: 0.35, M_BRICK: 0.25, S.M_CONCRETE: 0.2,
                                   M_GLASSWALL: 0.1, M_WOOD: 0.1})
            material[i] = kind
            color[i] = {M_PLASTER: lambda: _one(rng, PLASTER), M_BRICK: lambda: _one(rng, BRICK),
                        S.M_CONCRETE: lambda: np.full(3, rng.uniform(110, 205)),
                        M_GLASSWALL: lambda: _one(rng, ((70, 90, 105), (90, 110, 120),
                                                        (60, 75, 80))),
                        M_WOOD: lambda: _one(rng, PAINT)}[kind]()
        elif cls == S.WALL:
            kind = _weighted(rng, {M_BRICK: 0.35, S.M_CONCRETE: 0.35, M_PLASTER: 0.2, M_WOOD: 0.1})
            material[i] = kind
            color[i] = (_one(rng, BRICK) if kind == M_BRICK else
                        np.full(3, rng.uniform(100, 200)) if kind == S.M_CONCRETE else
                        _one(rng, PLASTER) if kind == M_PLASTER else _one(rng, PAINT))
        elif cls == S.FENCE:
            kind = _weighted(rng, {S.M_FENCE: 0.5, M_WOOD: 0.35, S.M_CONCRETE: 0.15})
            material[i] = kind
            color[i] = (np.full(3, rng.uniform(100, 200)) if kind == S.M_CONCRETE
                        else _one(rng, PAINT + POLE_COLOURS))
        elif cls == S.POLE:
            k = int(rng.integers(len(POLE_COLOURS)))
            color[i] = _one(rng, POLE_COLOURS[k:k + 1], 12)
            wooden[i] = k == len(POLE_COLOURS) - 1  # the last colour is a wooden pole's
            height = boxes.hi[i, 1] - boxes.lo[i, 1]
            lamp_box[i] = height > 4.4 and not wooden[i]
        elif cls == S.SIGN:
            color[i] = np.asarray(SIGN_COLOURS[rng.integers(len(SIGN_COLOURS))], float)
        elif cls == S.LIGHT:
            color[i] = _one(rng, LIGHT_HOUSING, 8)
        elif cls == S.VEGETATION:
            if inst not in by_instance:
                by_instance[inst] = np.clip(foliage * np.exp(rng.normal(0, 0.15, 3)), 0, 255)
            color[i] = (by_instance[inst] if boxes.material[i] == S.M_FOLIAGE
                        else _one(rng, ((90, 70, 50), (70, 65, 60), (110, 95, 80)), 12))
        elif cls in (S.CAR, S.TRUCK, S.BUS, S.TRAIN):
            if inst not in by_instance:
                by_instance[inst] = np.clip(_choose(rng, CAR_PAINT) + rng.uniform(-15, 15, 3),
                                            0, 255)
            color[i] = by_instance[inst]
            vz = boxes.vel[i, 2]
            vehicle_light[i] = 1 if vz < -0.1 else 2 if vz > 0.1 else 0
        elif cls in (S.PERSON, S.RIDER):
            color[i] = (np.full(3, rng.uniform(20, 70)) if rng.uniform() < 0.4
                        else rng.uniform(25, 230, 3))
        elif cls in (S.MOTORCYCLE, S.BICYCLE):
            color[i] = _one(rng, PAINT + CAR_PAINT_COLOURS, 20)
    tops = np.stack([(boxes.lo[:, 0] + boxes.hi[:, 0]) / 2, boxes.hi[:, 1],
                     (boxes.lo[:, 2] + boxes.hi[:, 2]) / 2], -1)
    sidewalk = _weighted(rng, {"concrete": 0.6, "pavers": 0.25, "asphalt": 0.15})
    side_colour = {"concrete": lambda: np.full(3, rng.uniform(140, 200)),
                   "pavers": lambda: _one(rng, BRICK + ((160, 150, 140),), 15),
                   "asphalt": lambda: np.full(3, rng.uniform(70, 110))}[sidewalk]()
    terrain = np.clip(np.asarray(SEASON_FOLIAGE[season], float) * rng.uniform(0.9, 1.3)
                      if rng.uniform() < 0.75 else _one(rng, ((120, 95, 70), (150, 130, 95))),
                      0, 255)
    style = Style(conditions=conditions, season=season, road_grey=float(rng.uniform(60, 140)),
                  road_tint=np.exp(rng.normal(0, 0.04, 3)),
                  marking=np.asarray((235, 235, 230) if rng.uniform() < 0.7 else (230, 190, 60),
                                     float),
                  sidewalk=(sidewalk, side_colour), terrain=terrain,
                  window_lit=float(rng.uniform(0.1, 0.5)), lamps=tops[lamp_box],
                  lamp_box=lamp_box, vehicle_light=vehicle_light, wooden=wooden)
    return replace(scene, boxes=replace(boxes, material=material, color=color), style=style)

