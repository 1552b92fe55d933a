"""Point trajectories and anchor sampling (PiCO Sec. 3.2-3.3, App. A.1).

Start points are drawn uniformly in space and time (1000 per video); each is moved to the
next frame by the bilinearly interpolated forward flow (PiCO Eq. 2) and stopped at the
first frame where forward and backward flow disagree (PiCO Eq. 3, gamma = 0, delta = 4) or
the point leaves the view.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .geometry import sample_at


@dataclass
class Trajectories:
    points: torch.Tensor  # float [N, T, 2] (x, y); NaN outside [start, end]
    start: torch.Tensor  # long [N]
    end: torch.Tensor  # long [N], last frame the point is tracked to (inclusive)

    def active(self, t: int) -> torch.Tensor:
        return (self.start <= t) & (self.end >= t)


def track_points(flow_fwd: torch.Tensor, flow_bwd: torch.Tensor, *, num_points: int = 1000,
                 gamma: float = 0.0, delta: float = 4.0,
                 rng: np.random.Generator | None = None) -> Trajectories:
    """flow_fwd[t] / flow_bwd[t]: [T-1, 2, H, W] flows between frames t and t + 1."""
    rng = rng or np.random.default_rng(0)
    steps, _, H, W = flow_fwd.shape
    T = steps + 1
    start = torch.from_numpy(rng.integers(0, T, num_points))
    xy = torch.from_numpy(rng.uniform((0, 0), (W - 1, H - 1), (num_points, 2))).float()
    points = torch.full((num_points, T, 2), float("nan"))
    points[torch.arange(num_points), start] = xy
    end = start.clone()
    alive = torch.zeros(num_points, dtype=torch.bool)
    for t in range(steps):
        alive |= start == t
        idx = torch.nonzero(alive).squeeze(1)
        if idx.numel() == 0:
            continue
        p = points[idx, t].T[None, :, :, None]  # [1, 2, M, 1]
        w = sample_at(flow_fwd[t][None], p)[0, :, :, 0]  # [2, M]
        q = p[0, :, :, 0] + w
        w_hat = sample_at(flow_bwd[t][None], q[None, :, :, None])[0, :, :, 0]
        ok = ((w + w_hat).pow(2).sum(0)
              < gamma * (w.pow(2).sum(0) + w_hat.pow(2).sum(0)) + delta)
        ok &= (q[0] >= 0) & (q[0] <= W - 1) & (q[1] >= 0) & (q[1] <= H - 1)
        keep = idx[ok]
        points[keep, t + 1] = q[:, ok].T
        end[keep] = t + 1
        alive[idx[~ok]] = False
    return Trajectories(points=points, start=start, end=end)


def anchor_sampling(traj: Trajectories, num_frames: int,
                    rng: np.random.Generator) -> tuple[int, list[int]]:
    """PiCO Sec. 3.3: draw an anchor frame; for each trajectory active on it take its endpoint
    furthest from the anchor; return the anchor and the `num_frames` frames holding the most
    such endpoints (ties to the earlier frame; frames with none are not returned)."""
    T = traj.points.shape[1]
    counts = np.zeros(T, np.int64)
    anchor = int(rng.integers(T))
    for _ in range(T):  # an anchor on which some trajectory is active
        on = traj.active(anchor)
        if on.any():
            break
        anchor = int(rng.integers(T))
    s, e = traj.start[on].numpy(), traj.end[on].numpy()
    far = np.where(np.abs(s - anchor) > np.abs(e - anchor), s, e)
    far = far[far != anchor]
    np.add.at(counts, far, 1)
    order = [int(t) for t in np.argsort(-counts, kind="stable") if counts[t] > 0]
    return anchor, order[:num_frames]


def point_pairs(traj: Trajectories, t1: int, t2: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [M, 2] in frames t1 and t2 of the trajectories tracked through both."""
    both = traj.active(t1) & traj.active(t2)
    return traj.points[both, t1], traj.points[both, t2]


FRAME_SELECTIONS = ("anchor", "random")


@dataclass
class PointPairs:
    """Frame pairs of one clip and the points tracked through both frames of each."""
    frames: list[tuple[int, int]]  # (anchor, partner) positions in the clip
    points: list[tuple[torch.Tensor, torch.Tensor]]  # [M_i, 2] (x, y) in each frame


def trajectory_pairs(flow_fwd: torch.Tensor, flow_bwd: torch.Tensor, rng: np.random.Generator,
                     *, num_points: int, partners: int, selection: str = "anchor",
                     gamma: float = 0.0, delta: float = 4.0) -> PointPairs:
    """PiCO's samples from a clip and its flow (Sec. 3.2-3.3): track `num_points` points
    (Eq. 2-3), pick an anchor frame and up to `partners` frames by ``anchor_sampling``
    (``selection="anchor"``) or uniformly among the other frames (``"random"``, Fig. 5's
    ablation), and return the point pairs between the anchor and each partner.
    flow_fwd / flow_bwd: [T-1, 2, H, W], frame t -> t+1 and t+1 -> t."""
    if selection not in FRAME_SELECTIONS:
        raise ValueError(f"unknown frame selection {selection!r}; known: "
                         f"{', '.join(FRAME_SELECTIONS)}")
    traj = track_points(flow_fwd, flow_bwd, num_points=num_points, gamma=gamma, delta=delta,
                        rng=rng)
    if selection == "anchor":
        anchor, chosen = anchor_sampling(traj, partners, rng)
    else:
        T = traj.points.shape[1]
        anchor = int(rng.integers(T))
        others = [t for t in range(T) if t != anchor]
        chosen = [int(t) for t in rng.permutation(others)[:partners]]
    frames = [(anchor, t) for t in chosen]
    return PointPairs(frames=frames, points=[point_pairs(traj, a, t) for a, t in frames])
