import numpy as np
import torch

from pretrain.flow.trajectories import (Trajectories, anchor_sampling, point_pairs,
                                        track_points)


def _constant(T, H, W, u):
    f = torch.zeros(T - 1, 2, H, W)
    f[:, 0] = u
    return f


def test_points_move_with_the_flow_until_they_leave_the_view():
    T, H, W = 12, 16, 20
    traj = track_points(_constant(T, H, W, 1.0), _constant(T, H, W, -1.0), num_points=200,
                        rng=np.random.default_rng(0))
    x0 = traj.points[torch.arange(200), traj.start, 0]
    expected_end = torch.minimum(traj.start + torch.floor(W - 1 - x0).long(),
                                 torch.tensor(T - 1))
    assert torch.equal(traj.end, expected_end)
    i = int(torch.argmax(traj.end - traj.start))
    s, e = int(traj.start[i]), int(traj.end[i])
    steps = traj.points[i, s:e + 1, 0] - traj.points[i, s, 0]
    assert torch.allclose(steps, torch.arange(e - s + 1).float())
    assert torch.isnan(traj.points[i, :s]).all() and torch.isnan(traj.points[i, e + 1:]).all()


def test_tracking_stops_at_the_first_inconsistent_step():
    T, H, W = 6, 8, 40
    fwd, bwd = _constant(T, H, W, 3.0), _constant(T, H, W, -3.0)
    bwd[2] = 0  # frames 2 -> 3 disagree: |3 + 0|^2 = 9 > delta = 4 (PiCO: gamma 0, delta 4)
    traj = track_points(fwd, bwd, num_points=300, rng=np.random.default_rng(1))
    early = traj.start <= 2
    reach = traj.points[early, 2, 0].isfinite()
    assert (traj.end[early][reach] == 2).all()  # stopped at frame 2, never tracked to 3


def test_ground_truth_trajectories_avoid_occluded_pixels(tiny_world, tiny_root):
    from pretrain.flow.estimators import read_flow_gt
    spec = tiny_world.videos[0]
    gt = read_flow_gt(tiny_root / "bdd100k" / "flow_gt" / spec.split / f"{spec.name}.npz")
    traj = track_points(gt["flow_fwd"], gt["flow_bwd"], num_points=1000,
                        rng=np.random.default_rng(0))
    hits = total = 0
    for t in range(gt["flow_fwd"].shape[0]):
        on = traj.active(t) & traj.active(t + 1)
        xy = traj.points[on, t].round().long()
        hits += int(gt["occlusion_fwd"][t][xy[:, 1], xy[:, 0]].sum())
        total += int(on.sum())
    assert total > 1000 and hits / total < 0.05


def test_anchor_sampling_picks_frames_with_most_far_endpoints():
    points = torch.zeros(4, 10, 2)
    start = torch.tensor([0, 1, 2, 5])
    end = torch.tensor([9, 9, 4, 7])
    traj = Trajectories(points=points, start=start, end=end)
    anchor, frames = anchor_sampling(traj, 2, np.random.default_rng(3))
    on = [i for i in range(4) if start[i] <= anchor <= end[i]]
    far = [int(start[i]) if abs(start[i] - anchor) > abs(end[i] - anchor) else int(end[i])
           for i in on]
    counts = {f: far.count(f) for f in far if f != anchor}
    assert frames and set(frames) <= set(counts)
    assert counts[frames[0]] == max(counts.values())
    a, b = point_pairs(traj, 2, 4)
    assert a.shape == b.shape == (3, 2)


def test_anchor_sampling_keeps_the_frames_with_most_far_endpoints_on_a_constructed_case():
    # trajectories (start, end) around anchor 5; the furthest endpoint of each active one:
    # (0, 9) -> 0, (1, 9) -> 9 (a tie goes to the end), (2, 9) -> 9, (4, 9) -> 9,
    # (5, 7) -> 7, (3, 6) -> 3; (7, 8) is not active on 5
    start = torch.tensor([0, 1, 2, 4, 5, 3, 7])
    end = torch.tensor([9, 9, 9, 9, 7, 6, 8])
    traj = Trajectories(points=torch.zeros(7, 10, 2), start=start, end=end)
    rng = np.random.default_rng(0)
    assert anchor_sampling(traj, 1, rng, anchor=5) == (5, [9])
    assert anchor_sampling(traj, 3, rng, anchor=5) == (5, [9, 0, 3])  # ties: earlier frame
    assert anchor_sampling(traj, 9, rng, anchor=5) == (5, [9, 0, 3, 7])  # only frames with any
