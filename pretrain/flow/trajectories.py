"""Point trajectories and frame selection (PiCO Sec. 3.2-3.3, App. A.1).

Start points are drawn uniformly in space and time (1000 per video); each is moved to the
next frame by the bilinearly interpolated forward flow (PiCO Eq. 2) and stopped at the
first frame where forward and backward flow disagree (PiCO Eq. 3, gamma = 0, delta = 4) or
the point leaves the view.

`Tracker` follows the points one flow step at a time and keeps, for every step, the two
sides of Eq. 3 in half precision (App. A.1): |w + w_hat|^2 and |w|^2 + |w_hat|^2. It stops a
point only by a looser rule than any it will be asked for (a trajectory store tracks with
``delta_max``), so `Tracks.threshold(gamma, delta)` cuts the trajectories of any tighter
(gamma, delta) without the flow. Every rule compares the stored half-precision values, so
tracking from flow and cutting stored tracks give the same trajectories.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .geometry import sample_at

# why a stored track ends: the video ended, the point left the view, or a step broke the
# tracker's own (loose) consistency rule: a looser rule than that one cannot be answered
ENDED, LEFT_VIEW, INCONSISTENT = 0, 1, 2


@dataclass
class Trajectories:
    points: torch.Tensor  # float [N, T, 2] (x, y); NaN outside [start, end]
    start: torch.Tensor  # long [N]
    end: torch.Tensor  # long [N], last frame the point is tracked to (inclusive)

    def active(self, t: int) -> torch.Tensor:
        return (self.start <= t) & (self.end >= t)


def consistent(error: torch.Tensor, magnitude: torch.Tensor, gamma: float,
               delta: float) -> torch.Tensor:
    """PiCO Eq. 3 on stored half-precision sides: |w + w_hat|^2 < gamma (|w|^2 + |w_hat|^2)
    + delta. error, magnitude: float16 [...] -> bool [...]."""
    bound = delta + (gamma * magnitude.float() if gamma else 0.0)
    return error.float() < bound


def start_points(num_frames: int, height: int, width: int, num_points: int,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Starts uniform in time and space (PiCO App. A.1): frame long [N], (x, y) float [N, 2]."""
    start = torch.from_numpy(rng.integers(0, num_frames, num_points))
    xy = torch.from_numpy(rng.uniform((0, 0), (width - 1, height - 1), (num_points, 2)))
    return start, xy.float()


@dataclass
class Tracks:
    """Tracked points before any Eq. 3 cut: positions until the tracker stopped, and per
    step t (t -> t + 1) the two sides of Eq. 3 in float16 (inf where no step was taken)."""
    points: torch.Tensor  # float [N, T, 2], NaN outside [start, last]
    start: torch.Tensor  # long [N]
    last: torch.Tensor  # long [N], last frame with a position
    stop: torch.Tensor  # uint8 [N]: ENDED, LEFT_VIEW or INCONSISTENT
    error: torch.Tensor  # float16 [N, T]: |w + w_hat|^2 of step t
    magnitude: torch.Tensor  # float16 [N, T]: |w|^2 + |w_hat|^2 of step t
    rule: tuple[float, float]  # (gamma, delta) the tracker stopped points by

    def threshold(self, gamma: float, delta: float) -> Trajectories:
        """Trajectories under Eq. 3 with (gamma, delta): each point ends before its first
        inconsistent step. Raises ValueError where a point the tracker stopped would go on
        under the asked rule (a looser rule than the tracker's)."""
        N, T = self.error.shape
        t = torch.arange(T)
        on = (t >= self.start[:, None]) & (t < self.last[:, None])
        fails = ~consistent(self.error, self.magnitude, gamma, delta) & on
        first = torch.where(fails.any(1), fails.float().argmax(1), self.last)
        stopped = self.stop == INCONSISTENT
        beyond = stopped & ~fails.any(1) & consistent(
            self.error[torch.arange(N), self.last], self.magnitude[torch.arange(N), self.last],
            gamma, delta)
        if beyond.any():
            raise ValueError(f"gamma={gamma}, delta={delta} is looser than the rule "
                             f"{self.rule} the points were tracked with "
                             f"({int(beyond.sum())} of {N} would go on): track again with a "
                             f"larger delta_max")
        points = self.points.clone()
        points[t[None] > first[:, None]] = float("nan")
        return Trajectories(points=points, start=self.start.clone(), end=first)


class Tracker:
    """PiCO Eq. 2: moves points by the bilinearly interpolated forward flow, one step at a
    time (``step(t, flow_fwd, flow_bwd)`` for t = 0 .. T-2, flows [2, H, W] between frames t
    and t + 1), and stops a point that leaves the view or breaks Eq. 3 with `rule`."""

    def __init__(self, start: torch.Tensor, xy: torch.Tensor, num_frames: int, *,
                 rule: tuple[float, float] = (0.0, 4.0)):
        N, T = len(start), num_frames
        self.rule = (float(rule[0]), float(rule[1]))
        self.points = torch.full((N, T, 2), float("nan"))
        self.points[torch.arange(N), start] = xy.float()
        self.start, self.last = start.long(), start.long().clone()
        self.stop = torch.full((N,), ENDED, dtype=torch.uint8)
        self.error = torch.full((N, T), float("inf"), dtype=torch.float16)
        self.magnitude = torch.full((N, T), float("inf"), dtype=torch.float16)
        self.alive = torch.zeros(N, dtype=torch.bool)
        self.next_step = 0

    def step(self, t: int, flow_fwd: torch.Tensor, flow_bwd: torch.Tensor) -> None:
        if t != self.next_step:
            raise ValueError(f"tracker expects step {self.next_step}, got {t}")
        self.next_step += 1
        H, W = flow_fwd.shape[-2:]
        self.alive |= self.start == t
        idx = torch.nonzero(self.alive).squeeze(1)
        if idx.numel() == 0:
            return
        p = self.points[idx, t].T[None, :, :, None]  # [1, 2, M, 1]
        w = sample_at(flow_fwd[None].float(), p)[0, :, :, 0]  # [2, M]
        q = p[0, :, :, 0] + w
        w_hat = sample_at(flow_bwd[None].float(), q[None, :, :, None])[0, :, :, 0]
        error = (w + w_hat).pow(2).sum(0).half()
        magnitude = (w.pow(2).sum(0) + w_hat.pow(2).sum(0)).half()
        inside = (q[0] >= 0) & (q[0] <= W - 1) & (q[1] >= 0) & (q[1] <= H - 1)
        ok = consistent(error, magnitude, *self.rule)
        self.error[idx[inside], t] = error[inside]
        self.magnitude[idx[inside], t] = magnitude[inside]
        keep = idx[ok & inside]
        self.points[keep, t + 1] = q[:, ok & inside].T
        self.last[keep] = t + 1
        self.stop[idx[~inside]] = LEFT_VIEW
        self.stop[idx[inside & ~ok]] = INCONSISTENT
        self.alive[idx[~(ok & inside)]] = False

    def tracks(self) -> Tracks:
        steps = self.points.shape[1] - 1
        if self.next_step != steps:
            raise ValueError(f"tracker took {self.next_step} of {steps} steps")
        return Tracks(points=self.points, start=self.start, last=self.last, stop=self.stop,
                      error=self.error, magnitude=self.magnitude, rule=self.rule)


def track_points(flow_fwd: torch.Tensor, flow_bwd: torch.Tensor, *, num_points: int = 1000,
                 gamma: float = 0.0, delta: float = 4.0,
                 rng: np.random.Generator | None = None) -> Trajectories:
    """flow_fwd[t] / flow_bwd[t]: [T-1, 2, H, W] flows between frames t and t + 1."""
    rng = rng or np.random.default_rng(0)
    steps, _, H, W = flow_fwd.shape
    start, xy = start_points(steps + 1, H, W, num_points, rng)
    tracker = Tracker(start, xy, steps + 1, rule=(gamma, delta))
    for t in range(steps):
        tracker.step(t, flow_fwd[t], flow_bwd[t])
    return tracker.tracks().threshold(gamma, delta)


def anchor_sampling(traj: Trajectories, num_frames: int, rng: np.random.Generator, *,
                    anchor: int | None = None) -> tuple[int, list[int]]:
    """PiCO Sec. 3.3: draw an anchor frame (or take `anchor`); for each trajectory active on
    it take its endpoint furthest from the anchor; return the anchor and the `num_frames`
    frames holding the most such endpoints (ties to the earlier frame; frames with none are
    not returned)."""
    T = traj.points.shape[1]
    counts = np.zeros(T, np.int64)
    if anchor is None:
        anchor = int(rng.integers(T))
        for _ in range(T):  # an anchor on which some trajectory is active
            if traj.active(anchor).any():
                break
            anchor = int(rng.integers(T))
    on = traj.active(anchor)
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
    traj = track_points(flow_fwd, flow_bwd, num_points=num_points, gamma=gamma, delta=delta,
                        rng=rng)
    return frame_pairs(traj, partners, rng, selection=selection)


def select_frames(traj: Trajectories, partners: int, rng: np.random.Generator, *,
                  selection: str = "anchor") -> tuple[int, list[int]]:
    """An anchor frame and up to `partners` other frames: ``anchor_sampling`` (Sec. 3.3) or,
    for ``selection="random"`` (Fig. 5's ablation), uniformly among the other frames."""
    if selection not in FRAME_SELECTIONS:
        raise ValueError(f"unknown frame selection {selection!r}; known: "
                         f"{', '.join(FRAME_SELECTIONS)}")
    if selection == "anchor":
        return anchor_sampling(traj, partners, rng)
    T = traj.points.shape[1]
    anchor = int(rng.integers(T))
    others = [t for t in range(T) if t != anchor]
    return anchor, [int(t) for t in rng.permutation(others)[:partners]]


def frame_pairs(traj: Trajectories, partners: int, rng: np.random.Generator, *,
                selection: str = "anchor") -> PointPairs:
    """``select_frames``, then the point pairs between the anchor and each chosen frame."""
    anchor, chosen = select_frames(traj, partners, rng, selection=selection)
    frames = [(anchor, t) for t in chosen]
    return PointPairs(frames=frames, points=[point_pairs(traj, a, t) for a, t in frames])
