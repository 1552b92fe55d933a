"""Procedural street scenes: a road along +z lined with boxes of every Cityscapes class.

A scene is a set of axis-aligned boxes, some moving at constant velocity, over an
infinite ground plane (road / sidewalk / terrain bands) under a sky at infinity, and an
ego camera driving along the road. Everything is drawn from one numpy Generator, so a
scene is a pure function of its seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .camera import Camera

# Cityscapes train ids (checked against cityscapesscripts in tests).
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)

# Materials: how a box or ground band is textured.
(M_ASPHALT, M_PAVING, M_GRASS, M_FACADE, M_CONCRETE, M_FENCE, M_METAL, M_SIGN, M_LIGHT,
 M_FOLIAGE, M_BARK, M_VEHICLE, M_CLOTH, M_BIKE) = range(14)

LANE = 3.5  # metres, one traffic lane; the ego lane is x in [0, LANE]
PARKING = 2.0  # parking strip beside each outer lane, still class road
ROAD_HALF = LANE + PARKING


@dataclass
class Boxes:
    """Structure of arrays for N axis-aligned boxes; position at time s is lo + vel * s."""
    lo: np.ndarray  # float64[N, 3]
    hi: np.ndarray  # float64[N, 3]
    vel: np.ndarray  # float64[N, 3] metres per second
    cls: np.ndarray  # int64[N] Cityscapes train id
    material: np.ndarray  # int64[N]
    color: np.ndarray  # float64[N, 3] base colour in [0, 255]
    instance: np.ndarray  # int64[N] object id (> 0); parts of one object share it
    tex_seed: np.ndarray  # int64[N]

    def __len__(self) -> int:
        return len(self.cls)

    def at(self, time: float) -> tuple[np.ndarray, np.ndarray]:
        shift = self.vel * time
        return self.lo + shift, self.hi + shift


@dataclass
class Scene:
    boxes: Boxes
    speed: float  # ego speed, m/s along +z
    cam_x: float
    cam_height: float
    pitch: float
    yaw_amp: float
    yaw_freq: float
    yaw_phase: float
    sway_amp: float
    sidewalk: float  # sidewalk width
    outer_class: tuple[int, int]  # ground class beyond the sidewalk, (left, right)
    ground_seed: int
    duration: float
    style: object = None  # world v2: style.Style (looks and capture conditions); None = v1

    def camera(self, time: float, height: int, width: int, focal: float) -> Camera:
        phase = 2 * np.pi * self.yaw_freq * time + self.yaw_phase
        pos = (self.cam_x + self.sway_amp * np.sin(0.7 * phase),
               self.cam_height,
               self.speed * time)
        return Camera(position=pos, yaw=float(self.yaw_amp * np.sin(phase)),
                      pitch=self.pitch, focal=focal, height=height, width=width)


@dataclass
class _Builder:
    rng: np.random.Generator
    rows: list = field(default_factory=list)
    next_instance: int = 1

    def add(self, lo, hi, cls, material, color, vel=(0.0, 0.0, 0.0), instance=None) -> int:
        if instance is None:
            instance = self.new_instance()
        self.rows.append((np.asarray(lo, float), np.asarray(hi, float), np.asarray(vel, float),
                          cls, material, np.asarray(color, float), instance,
                          int(self.rng.integers(1, 2**31 - 1))))
        return instance

    def new_instance(self) -> int:
        self.next_instance += 1
        return self.next_instance - 1

    def boxes(self) -> Boxes:
        if not self.rows:
            raise ValueError("empty scene")
        cols = list(zip(*self.rows))
        return Boxes(lo=np.stack(cols[0]), hi=np.stack(cols[1]), vel=np.stack(cols[2]),
                     cls=np.asarray(cols[3], np.int64), material=np.asarray(cols[4], np.int64),
                     color=np.stack(cols[5]), instance=np.asarray(cols[6], np.int64),
                     tex_seed=np.asarray(cols[7], np.int64))


def _jitter(rng, color, amount=25.0):
    return np.clip(np.asarray(color, float) + rng.uniform(-amount, amount, 3), 0, 255)


CAR_COLORS = [(200, 30, 30), (30, 60, 160), (220, 220, 220), (40, 40, 40), (150, 150, 155),
              (20, 110, 60), (230, 180, 40), (110, 70, 40)]


def _vehicle(b: _Builder, cls, x, z, vel_z, width, height, length, color, y0=0.0):
    lo = (x - width / 2, y0, z)
    hi = (x + width / 2, y0 + height, z + length)
    return b.add(lo, hi, cls, M_VEHICLE, color, vel=(0, 0, vel_z))


def _truck(b: _Builder, x, z, vel_z, rng):
    inst = b.new_instance()
    w = rng.uniform(2.3, 2.6)
    cargo = rng.uniform(5.5, 8.5)
    color = _jitter(rng, CAR_COLORS[rng.integers(len(CAR_COLORS))])
    b.add((x - w / 2, 0.4, z), (x + w / 2, rng.uniform(3.0, 3.6), z + cargo), TRUCK,
          M_VEHICLE, color, vel=(0, 0, vel_z), instance=inst)
    cab_z = z + cargo + 0.2 if vel_z >= 0 else z - 2.2
    b.add((x - w / 2 + 0.05, 0.4, cab_z), (x + w / 2 - 0.05, 2.8, cab_z + 2.0), TRUCK,
          M_VEHICLE, _jitter(rng, color, 40), vel=(0, 0, vel_z), instance=inst)


def _two_wheeler(b: _Builder, rng, cls, x, z, vel, length, height, width):
    b.add((x - width / 2, 0.0, z), (x + width / 2, height, z + length), cls, M_BIKE,
          _jitter(rng, (60, 60, 70), 30), vel=vel)
    rz = z + length * 0.3
    b.add((x - 0.23, height - 0.1, rz), (x + 0.23, height + 0.75, rz + 0.5), RIDER, M_CLOTH,
          _jitter(rng, (90, 60, 140), 60), vel=vel)


def _person(b: _Builder, rng, x, z, vel):
    w, d, h = rng.uniform(0.4, 0.55), rng.uniform(0.25, 0.4), rng.uniform(1.55, 1.9)
    b.add((x - w / 2, 0.0, z - d / 2), (x + w / 2, h, z + d / 2), PERSON, M_CLOTH,
          _jitter(rng, (rng.uniform(30, 200), rng.uniform(30, 200), rng.uniform(30, 200)), 10),
          vel=vel)


def make_scene(seed, duration: float) -> Scene:
    """A street scene for an ego drive of `duration` seconds; `seed` seeds numpy."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    speed = rng.uniform(5.0, 11.0)
    z_start, z_end = -40.0, speed * duration + 170.0
    urban = rng.uniform() < 0.65
    sidewalk = rng.uniform(2.0, 4.0)
    outer = ROAD_HALF + sidewalk
    rare = {name: rng.uniform() < p for name, p in
            (("bus", 0.15), ("train", 0.06), ("bicycle", 0.12), ("motorcycle", 0.08),
             ("wall_l", 0.12), ("wall_r", 0.12))}

    for side in (-1.0, 1.0):
        sx = lambda a, c: (min(side * a, side * c), max(side * a, side * c))  # noqa: E731
        density = rng.uniform(0.55, 0.95) if urban else rng.uniform(0.05, 0.4)
        setback = outer + rng.uniform(0.0, 2.0)
        z = z_start
        while z < z_end:  # buildings, or trees / hedges in the gaps
            length = rng.uniform(8, 30)
            if rng.uniform() < density:
                depth, height = rng.uniform(8, 16), rng.uniform(6, 28 if urban else 10)
                x0, x1 = sx(setback, setback + depth)
                b.add((x0, 0, z), (x1, height, z + length), BUILDING, M_FACADE,
                      _jitter(rng, (rng.uniform(90, 200),) * 3, 30))
            else:
                for tz in np.arange(z + 2, z + length - 2, rng.uniform(5, 10)):
                    _tree(b, rng, side * (setback + rng.uniform(0.5, 4)), tz)
                if rng.uniform() < 0.4:
                    x0, x1 = sx(outer + 0.3, outer + 1.3)
                    b.add((x0, 0, z), (x1, rng.uniform(0.8, 1.8), z + length), VEGETATION,
                          M_FOLIAGE, _jitter(rng, (60, 110, 40)))
            z += length + rng.uniform(0, 4)
        if rare["wall_l" if side < 0 else "wall_r"]:
            z = z_start + rng.uniform(0, 30)
            while z < z_end:
                length = rng.uniform(10, 40)
                x0, x1 = sx(outer + 0.05, outer + 0.35)
                b.add((x0, 0, z), (x1, rng.uniform(1.0, 2.6), z + length), WALL, M_CONCRETE,
                      _jitter(rng, (150, 140, 125)))
                z += length + rng.uniform(20, 60)
        if rng.uniform() < 0.5:
            z = z_start + rng.uniform(0, 30)
            while z < z_end:
                length = rng.uniform(8, 30)
                x0, x1 = sx(outer - 0.25, outer - 0.15)
                b.add((x0, 0, z), (x1, rng.uniform(1.0, 1.5), z + length), FENCE, M_FENCE,
                      _jitter(rng, (120, 110, 90)))
                z += length + rng.uniform(10, 50)
        for z in np.arange(z_start + rng.uniform(0, 10), z_end, rng.uniform(14, 28)):
            _pole(b, rng, side * (ROAD_HALF + 0.5), z, with_sign=rng.uniform() < 0.3)
        for z in np.arange(z_start + rng.uniform(0, 40), z_end, rng.uniform(30, 70)):
            _pole(b, rng, side * (ROAD_HALF + 0.4), z, with_sign=True, height=2.6)
        for z in np.arange(z_start, z_end, rng.uniform(5.5, 9)):  # parked cars
            if rng.uniform() < (0.55 if urban else 0.2):
                _vehicle(b, CAR, side * (LANE + PARKING / 2), z, 0.0, rng.uniform(1.7, 1.9),
                         rng.uniform(1.35, 1.6), rng.uniform(3.9, 4.7),
                         _jitter(rng, CAR_COLORS[rng.integers(len(CAR_COLORS))]))
        for _ in range(rng.integers(0, 7 if urban else 3)):  # pedestrians on the sidewalk
            x = side * (ROAD_HALF + rng.uniform(0.4, sidewalk - 0.4))
            _person(b, rng, x, rng.uniform(5, z_end - 40), (0, 0, rng.choice([-1, 1]) *
                                                               rng.uniform(0.7, 1.6)))

    if rng.uniform() < 0.5:  # an intersection with traffic lights on both sides
        z = rng.uniform(20, z_end - 60)
        for side in (-1.0, 1.0):
            _traffic_light(b, rng, side * (ROAD_HALF + 0.6), z)
        for _ in range(rng.integers(0, 4)):  # people on the crossing
            _person(b, rng, rng.uniform(-ROAD_HALF, ROAD_HALF), z + rng.uniform(-1, 3),
                    (rng.choice([-1, 1]) * rng.uniform(0.8, 1.5), 0, 0))

    # traffic: same-direction vehicles keep their distance; oncoming ones pass by
    for _ in range(rng.integers(0, 3)):
        _vehicle(b, CAR, LANE / 2, rng.uniform(14, 60), speed + rng.uniform(-0.3, 1.5), 1.8,
                 rng.uniform(1.4, 1.6), rng.uniform(4.0, 4.7),
                 _jitter(rng, CAR_COLORS[rng.integers(len(CAR_COLORS))]))
    for _ in range(rng.integers(1, 5)):
        z = rng.uniform(10, z_end)
        if rng.uniform() < 0.3:
            _truck(b, -LANE / 2, z, -rng.uniform(4, 11), rng)
        else:
            _vehicle(b, CAR, -LANE / 2, z, -rng.uniform(4, 12), 1.8, rng.uniform(1.4, 1.6),
                     rng.uniform(4.0, 4.7),
                     _jitter(rng, CAR_COLORS[rng.integers(len(CAR_COLORS))]))
    if rare["bus"]:
        _vehicle(b, BUS, -LANE / 2, rng.uniform(40, z_end), -rng.uniform(3, 9),
                 2.55, 3.1, rng.uniform(10, 12), _jitter(rng, (200, 170, 30), 40), y0=0.3)
    if rare["train"]:
        _vehicle(b, TRAIN, -LANE / 2, rng.uniform(60, z_end), -rng.uniform(3, 7),
                 2.6, 3.5, rng.uniform(20, 30), _jitter(rng, (220, 220, 230), 20), y0=0.3)
    if rare["bicycle"]:
        _two_wheeler(b, rng, BICYCLE, LANE + 0.8, rng.uniform(12, 50),
                     (0, 0, rng.uniform(3, 6)), 1.7, 1.0, 0.5)
    if rare["motorcycle"]:
        _two_wheeler(b, rng, MOTORCYCLE, -LANE / 2, rng.uniform(40, z_end),
                     (0, 0, -rng.uniform(6, 12)), 2.0, 1.1, 0.75)

    return Scene(
        boxes=b.boxes(), speed=speed, cam_x=rng.uniform(1.3, 2.2),
        cam_height=rng.uniform(1.25, 1.6), pitch=rng.uniform(0.0, 0.05),
        yaw_amp=rng.uniform(0.0, 0.025), yaw_freq=rng.uniform(0.1, 0.4),
        yaw_phase=rng.uniform(0, 2 * np.pi), sway_amp=rng.uniform(0, 0.25),
        sidewalk=sidewalk,
        outer_class=tuple(SIDEWALK if urban or rng.uniform() < 0.3 else TERRAIN
                          for _ in range(2)),
        ground_seed=int(rng.integers(1, 2**31 - 1)), duration=duration)


def _tree(b: _Builder, rng, x, z):
    inst = b.new_instance()
    trunk_h = rng.uniform(1.8, 3.5)
    b.add((x - 0.15, 0, z - 0.15), (x + 0.15, trunk_h + 0.5, z + 0.15), VEGETATION, M_BARK,
          _jitter(rng, (90, 70, 50), 15), instance=inst)
    r = rng.uniform(1.2, 2.2)
    b.add((x - r, trunk_h, z - r), (x + r, trunk_h + rng.uniform(2, 4), z + r), VEGETATION,
          M_FOLIAGE, _jitter(rng, (70, 120, 45)), instance=inst)


def _pole(b: _Builder, rng, x, z, with_sign: bool, height: float | None = None):
    height = height or rng.uniform(5, 8)
    w = rng.uniform(0.12, 0.22)
    b.add((x - w / 2, 0, z - w / 2), (x + w / 2, height, z + w / 2), POLE, M_METAL,
          _jitter(rng, (130, 130, 135), 20))
    if with_sign:
        s = rng.uniform(0.5, 0.8)
        y = height - s - 0.1
        xs = x - np.sign(x) * (w / 2 + 0.02)  # in front of the pole, facing the road
        b.add((min(xs, xs - np.sign(x) * s), y, z - w / 2 - 0.05),
              (max(xs, xs - np.sign(x) * s), y + s, z - w / 2 - 0.01), SIGN, M_SIGN,
              [(200, 30, 30), (30, 70, 180), (230, 200, 40)][rng.integers(3)])


def _traffic_light(b: _Builder, rng, x, z):
    _pole(b, rng, x, z, with_sign=False, height=rng.uniform(4.5, 5.5))
    xl = x - np.sign(x) * 0.35
    y = rng.uniform(3.0, 3.8)
    b.add((xl - 0.17, y, z - 0.5), (xl + 0.17, y + 0.95, z - 0.2), LIGHT, M_LIGHT, (35, 35, 35))
