"""World v2's capture conditions: time of day, weather, light and the camera, drawn once per
video or still and constant within it (so the world's flow stays exact).

Frequencies are BDD100K's attribute labels of its 70k training images
(bdd100k_labels_images_train.json; Yu et al., CVPR 2020, Sec. 3 and Fig. 4, the weather /
time-of-day distributions), "undefined" left out. Light levels, visibility and camera
parameters are physical ranges chosen from the cited quantities (meteorological visibility
V gives the extinction beta = 3.912 / V, Koschmieder), never from an SSL result.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TIME_OF_DAY = {"daytime": 36728, "night": 27971, "dawn/dusk": 5027}
WEATHER = {"clear": 37344, "overcast": 8770, "snowy": 5549, "rainy": 5070,
           "partly cloudy": 4881, "foggy": 130}
VISIBILITY_KM = {"clear": (8.0, 40.0), "partly cloudy": (8.0, 40.0), "overcast": (3.0, 15.0),
                 "rainy": (0.8, 4.0), "snowy": (0.5, 3.0), "foggy": (0.05, 0.4)}
"""Meteorological visibility ranges by weather (WMO fog < 1 km, mist / haze 1-5 km)."""


@dataclass(frozen=True)
class Conditions:
    time_of_day: str
    weather: str
    sun: np.ndarray  # unit vector towards the sun (world frame)
    sun_rgb: np.ndarray  # direct irradiance, linear RGB (0 without a visible sun)
    ambient_rgb: np.ndarray  # sky irradiance on an upward surface, linear RGB
    sky_zenith: np.ndarray  # sky radiance, linear RGB
    sky_horizon: np.ndarray
    cloud: float  # cloud cover of the sky, 0..1
    haze_beta: float  # extinction per metre
    wet: float  # road wetness, 0..1 (mirror-like reflections of the sky)
    snow: float  # snow cover of the ground and of boxes' tops, 0..1
    lamps: bool  # street lamps, lit windows and vehicle lights are on
    exposure: float  # radiance -> sensor signal
    white_balance: np.ndarray  # per-channel gains, green = 1
    gamma: float  # the exponent of the camera's sRGB-like curve (2.4 in sRGB)
    noise: float  # sensor noise std in 8-bit units at the output
    seed: int

    def describe(self) -> dict:
        return {"time_of_day": self.time_of_day, "weather": self.weather,
                "exposure": round(float(self.exposure), 4), "gamma": round(self.gamma, 3),
                "visibility_m": round(3.912 / self.haze_beta, 1), "wet": round(self.wet, 3),
                "snow": round(self.snow, 3), "noise": round(self.noise, 3)}


def _pick(rng, counts: dict) -> str:
    names = list(counts)
    p = np.asarray([counts[n] for n in names], float)
    return names[rng.choice(len(names), p=p / p.sum())]


def _luminance(rgb) -> float:
    return float(np.dot(rgb, [0.2126, 0.7152, 0.0722]))


def draw_conditions(rng: np.random.Generator, urban: bool) -> Conditions:
    """One capture's conditions; `urban` scenes have more sky glow at night."""
    tod, weather = _pick(rng, TIME_OF_DAY), _pick(rng, WEATHER)
    azimuth = rng.uniform(0, 2 * np.pi)
    elevation = np.radians(rng.uniform(20, 65) if tod == "daytime" else rng.uniform(2, 12))
    sun = np.array([np.cos(elevation) * np.sin(azimuth), np.sin(elevation),
                    np.cos(elevation) * np.cos(azimuth)])
    direct = {"clear": 1.0, "partly cloudy": 0.8}.get(weather, 0.0)
    cloud = {"clear": rng.uniform(0, 0.15), "partly cloudy": rng.uniform(0.3, 0.7)}.get(
        weather, 1.0)
    if tod == "daytime":
        sun_rgb = np.array([1.0, 0.96, 0.9]) * 3.0 * direct
        ambient = (np.array([0.55, 0.65, 0.85]) * (1 - cloud) + np.array([0.85, 0.87, 0.9])
                   * cloud) * (0.9 + 0.5 * cloud)
        zenith, horizon = np.array([0.25, 0.45, 0.9]) * 2.0, np.array([0.75, 0.8, 0.9]) * 2.2
    elif tod == "dawn/dusk":
        sun_rgb = np.array([1.0, 0.6, 0.3]) * 1.5 * direct
        ambient = np.array([0.5, 0.45, 0.6]) * 0.35 * (1 - 0.3 * cloud)
        zenith, horizon = np.array([0.2, 0.25, 0.5]) * 0.8, np.array([1.2, 0.6, 0.3]) * 0.9
    else:
        sun_rgb = np.zeros(3)
        glow = 0.0002 if urban else 0.00005  # sky glow: about 0.6 / 0.15 lux
        ambient = np.array([1.0, 0.75, 0.5]) * glow * (1 + cloud)
        zenith = np.array([0.3, 0.3, 0.45]) * 0.00005
        horizon = np.array([1.0, 0.7, 0.45]) * glow * 1.5
    grey = np.full(3, _luminance(horizon))
    zenith = zenith * (1 - cloud) + grey * 0.9 * cloud
    horizon = horizon * (1 - 0.5 * cloud) + grey * 0.5 * cloud
    lo, hi = VISIBILITY_KM[weather]
    visibility = 1000.0 * np.exp(rng.uniform(np.log(lo), np.log(hi)))
    wet = {"rainy": rng.uniform(0.6, 1.0), "snowy": rng.uniform(0.2, 0.6),
           "overcast": rng.uniform(0, 0.5) * (rng.uniform() < 0.3)}.get(weather, 0.0)
    snow = rng.uniform(0.3, 0.9) if weather == "snowy" else 0.0
    lamps = tod != "daytime"
    # auto exposure: mid grey under the scene's light to about 0.4 of the range, within
    # an error of +-0.4 stops; the gain is capped 6 stops above a clear day's (night images
    # are dark and noisy, lit by lamps and headlights)
    key = _luminance(ambient + 0.5 * sun_rgb)
    reference = 0.5 / (0.18 * 2.3)
    exposure = min(0.5 / (0.18 * max(key, 1e-9)), 64 * reference) * 2 ** rng.normal(0, 0.4)
    illuminant = (ambient + 0.5 * sun_rgb) / max(_luminance(ambient + 0.5 * sun_rgb), 1e-9) \
        if tod != "night" else np.array([1.0, 0.8, 0.6])
    wb = illuminant ** -rng.uniform(0.5, 1.0) * np.exp(rng.normal(0, 0.06, 3))
    wb = wb / wb[1]
    noise = 1.0 + 0.9 * np.sqrt(exposure / reference)
    return Conditions(time_of_day=tod, weather=weather, sun=sun, sun_rgb=sun_rgb,
                      ambient_rgb=ambient, sky_zenith=zenith, sky_horizon=horizon,
                      cloud=float(cloud), haze_beta=3.912 / visibility, wet=float(wet),
                      snow=float(snow), lamps=lamps, exposure=float(exposure),
                      white_balance=wb, gamma=float(rng.uniform(2.0, 2.8)),
                      noise=float(noise), seed=int(rng.integers(1, 2**31 - 1)))
