import numpy as np
import pytest
import torch

from benchmarks.cli import main
from pretrain.data.video import VideoSource
from pretrain.flow.estimators import GroundTruthFlow
from pretrain.flow.trajectories import Tracker, track_points
from pretrain.flow.trajectory_store import TrajectoryStore, build_store, video_rng


@pytest.fixture(scope="module")
def store(tiny_root, tmp_path_factory):
    """The tiny world's videos tracked on their exact flow, through the CLI."""
    out = tmp_path_factory.mktemp("traj") / "store"
    argv = ["flow", "trajectories", "--videos", str(tiny_root / "bdd100k" / "videos"),
            "--estimator", "gt", "--out", str(out), "--delta-max", "32"]
    assert main(argv) == 0
    return TrajectoryStore(out)


def _exact_flow(store, tiny_root, video: str):
    """The flow the store tracked on: the world's, one frame step at a time."""
    gt = GroundTruthFlow()
    path = next((tiny_root / "bdd100k" / "videos").rglob(f"{video}.*"))
    pairs = [gt.pair(path, t, t + 1) for t in range(store.meta(video)["positions"] - 1)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def test_tracks_on_exact_flow_end_on_the_worlds_points_and_stop_when_they_are_hidden(
        store, tiny_world):
    end_error, seen, stopped = [], [], []
    for video in store.videos():
        traj = store.load(video, gamma=0.0, delta=4.0)
        T = traj.points.shape[1]
        for t0 in range(T):
            idx = torch.nonzero(traj.start == t0).squeeze(1)
            truth = tiny_world.point_tracks(video, t0, traj.points[idx, t0].numpy(),
                                            list(range(t0, T)))
            for k, i in enumerate(idx.tolist()):
                if not truth["defined"][k]:  # on an edge: no one true surface point
                    continue
                e = int(traj.end[i])
                end_error.append(float(np.linalg.norm(truth["xy"][k, e - t0]
                                                      - traj.points[i, e].numpy())))
                seen.extend(truth["visible"][k, :e - t0 + 1])
                hidden = np.nonzero(~truth["visible"][k])[0]
                if len(hidden):  # hidden or out of view from frame t0 + hidden[0] on
                    stopped.append(e < t0 + hidden[0])
    end_error = np.array(end_error)
    assert len(end_error) > 3000 and len(stopped) > 1000
    # bilinear flow between pixels of two surfaces misleads the few points near edges
    assert np.mean(end_error < 0.5) > 0.95 and np.median(end_error) < 0.05
    assert np.mean(seen) > 0.97  # tracked positions are visible ones
    assert np.mean(stopped) > 0.9  # a point is stopped before it is hidden


def test_a_stored_set_cut_at_any_delta_equals_tracking_from_the_flow(store, tiny_root):
    video = store.videos()[1]
    fwd, bwd = _exact_flow(store, tiny_root, video)
    rule_kw = {"num_points": store.spec["points"]}
    for gamma, delta in [(0.0, 4.0), (0.0, 0.05), (0.0, 32.0), (0.01, 2.0)]:
        stored = store.load(video, gamma=gamma, delta=delta)
        direct = track_points(fwd, bwd, gamma=gamma, delta=delta,
                              rng=video_rng(store.spec["seed"], video), **rule_kw)
        assert torch.equal(stored.start, direct.start)
        assert torch.equal(stored.end, direct.end)
        assert torch.equal(stored.points.nan_to_num(-1), direct.points.nan_to_num(-1))
    ends = [store.load(video, delta=d).end - store.load(video, delta=d).start
            for d in (0.05, 4.0)]
    assert (ends[0] <= ends[1]).all() and (ends[0] < ends[1]).any()


def test_a_rule_looser_than_the_trackers_is_refused():
    T, H, W = 6, 8, 40
    fwd = torch.zeros(T - 1, 2, H, W)
    fwd[:, 0] = 3.0
    bwd = -fwd
    bwd[2] = 0  # step 2 -> 3: |3 + 0|^2 = 9
    tracker = Tracker(torch.zeros(50, dtype=torch.long), torch.rand(50, 2) * torch.tensor([8., 7.]),
                      T, rule=(0.0, 4.0))
    for t in range(T - 1):
        tracker.step(t, fwd[t], bwd[t])
    tracks = tracker.tracks()
    assert (tracks.threshold(0.0, 1.0).end == 2).all()
    with pytest.raises(ValueError, match="looser than the rule"):
        tracks.threshold(0.0, 16.0)


def test_the_store_resumes_checks_its_settings_and_reports(store, tiny_root, capsys):
    videos = str(tiny_root / "bdd100k" / "videos")
    argv = ["flow", "trajectories", "--videos", videos, "--estimator", "gt",
            "--out", str(store.root)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "tracked 0 new and 4 earlier of 4 videos" in out and "1000 points per video" in out
    assert main(argv[:-1] + [str(store.root), "--points", "10"]) == 2
    assert "another --out" in capsys.readouterr().err
    assert main(["flow", "info", str(store.root), "--delta", "1"]) == 0
    out = capsys.readouterr().out
    assert "4 videos" in out and "with gamma 0, delta 1: 4000 tracks" in out
    info = store.info()
    assert info["stops"]["left the view"] + info["stops"]["video ended"] \
        + info["stops"]["inconsistent"] == 4000


def test_a_damaged_or_foreign_store_file_names_itself(store, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(store.root, copy)
    video = store.videos()[0]
    with np.load(copy / f"{video}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["points"] = arrays["points"][:-1]
    np.savez(copy / f"{video}.npz", **arrays)
    with pytest.raises(ValueError, match=f"{video}.npz: arrays do not fit together"):
        TrajectoryStore(copy).load(video)
    (copy / "trajectories.json").write_text('{"format": "flowssl-trajectories/0"}')
    assert main(["flow", "info", str(copy)]) == 2


def test_a_flow_cache_without_the_strides_chain_is_named(tiny_root, tmp_path):
    from pretrain.flow.cache import precompute
    source = VideoSource(tiny_root / "bdd100k" / "videos" / "val")
    precompute(source, tmp_path / "cache", estimator="gt", dts=[2], every=2, progress=False)
    with pytest.raises(FileNotFoundError, match="precompute it with --dt 1 --every 1"):
        build_store(source, tmp_path / "store", cache=tmp_path / "cache", points=10,
                    progress=False)
    build_store(source, tmp_path / "store2", cache=tmp_path / "cache", points=10, stride=2,
                progress=False)
    store = TrajectoryStore(tmp_path / "store2")
    (video,) = store.videos()
    assert store.frames(video) == list(range(0, 12, 2))
    assert store.spec["flow"]["estimator"] == "gt"
