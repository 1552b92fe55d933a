"""Pinhole camera of the synthetic world.

World frame: x to the right of the road, y up, z along the road. Camera frame: x right,
y up, z forward. Pixel coordinates (u, v) have (0, 0) at the *centre* of the top-left
pixel, u to the right and v down, so u = cx + f x / z and v = cy - f y / z.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

NEAR = 0.05  # metres: nothing closer to the camera is rendered or counted as visible


@dataclass(frozen=True)
class Camera:
    position: tuple[float, float, float]
    yaw: float  # radians, positive turns towards +x
    pitch: float  # radians, positive looks down
    focal: float  # pixels
    height: int
    width: int

    @property
    def cx(self) -> float:
        return (self.width - 1) / 2.0

    @property
    def cy(self) -> float:
        return (self.height - 1) / 2.0

    @property
    def center(self) -> np.ndarray:
        return np.asarray(self.position, dtype=np.float64)

    @cached_property
    def rotation(self) -> np.ndarray:
        """3x3 matrix taking camera-frame vectors to the world frame."""
        cp, sp = np.cos(self.pitch), np.sin(self.pitch)
        cy, sy = np.cos(self.yaw), np.sin(self.yaw)
        pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        return yaw @ pitch

    @cached_property
    def rays(self) -> np.ndarray:
        """float64[H, W, 3] world-frame ray directions whose camera-frame z is 1.

        Along ``C + t * ray`` the parameter t is the camera-frame depth of the point.
        """
        u = np.arange(self.width, dtype=np.float64)
        v = np.arange(self.height, dtype=np.float64)
        uu, vv = np.meshgrid(u, v)
        cam = np.stack([(uu - self.cx) / self.focal, -(vv - self.cy) / self.focal,
                        np.ones_like(uu)], axis=-1)
        return cam @ self.rotation.T

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points [..., 3] -> camera-frame points [..., 3]."""
        return (points - self.center) @ self.rotation

    def project(self, points: np.ndarray):
        """World points [..., 3] -> (u, v, depth); depth <= 0 means behind the camera."""
        cam = self.to_camera(points)
        return self._pixels(cam)

    def project_directions(self, directions: np.ndarray):
        """Points at infinity along world directions [..., 3] -> (u, v, depth=inf or <=0)."""
        cam = directions @ self.rotation
        u, v, z = self._pixels(cam)
        return u, v, np.where(z > 0, np.inf, z)

    def _pixels(self, cam: np.ndarray):
        z = cam[..., 2]
        safe = np.where(np.abs(z) > 1e-12, z, 1e-12)
        u = self.cx + self.focal * cam[..., 0] / safe
        v = self.cy - self.focal * cam[..., 1] / safe
        return u, v, z
