"""The sample kinds (pretrain.data.samples): frame pairs and k-frame clips with the flow
between consecutive frames, through the step-indexed loader; trajectory point pairs made
from a clip and its flow."""
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from pretrain.config import ConfigError, load_preset, validate_preset
from pretrain.data.samples import FrameClips, make_samples
from pretrain.data.video import VideoSource
from pretrain.flow import get_estimator
from pretrain.flow.cache import FlowCache, precompute
from pretrain.flow.geometry import sample_at
from pretrain.flow.trajectories import trajectory_pairs
from pretrain.methods import METHODS, get_method_class
from pretrain.train import PretrainSchedule, StepBatches, _flows, sample_rngs

SCHEDULE = PretrainSchedule(steps=3, batch_size=4, optimizer="lars", lr=0.1,
                            weight_decay=0.0, seed=2)


def _source(tiny_root):
    return VideoSource(tiny_root / "bdd100k" / "videos" / "train")


def _clips(tiny_root, **kw):
    return FrameClips(_source(tiny_root), **{"clip_frames": 4, "clip_fps": 5, "repeats": 2,
                                             "seed": 1, **kw})


def test_clips_are_k_frames_of_the_video_resampled_at_the_clip_rate(tiny_root):
    clips = _clips(tiny_root)  # the tiny world's videos: 12 frames at 10 fps
    item = clips[0]
    assert item["frames"].shape[:2] == (2, 4) and clips.stride(0) == 2
    assert (item["frame_index"].diff(dim=1) == 2).all()
    assert torch.allclose(item["time"].diff(dim=1), torch.tensor(0.2, dtype=torch.float64))
    t = int(item["frame_index"][1, 3])
    assert np.array_equal(item["frames"][1, 3].numpy(), _source(tiny_root).read(0, [t])[0])
    starts = set()
    for epoch in range(40):
        clips.set_epoch(epoch)
        starts |= set(clips[1]["frame_index"][:, 0].tolist())
    assert starts == set(range(12 - 3 * 2))  # every start whose clip fits, and no other


def test_clip_flow_from_the_cache_equals_the_flow_estimated_for_the_batch(tiny_root, tmp_path):
    gt, source = get_estimator("gt"), _source(tiny_root)
    precompute(source, tmp_path / "by2", estimator="gt", dts=[2], every=2, progress=False)
    cached = StepBatches(_clips(tiny_root, clip_frames=3, flow_cache=FlowCache(tmp_path / "by2")),
                         SCHEDULE)[1]
    assert cached["frames"].shape[:2] == (4, 3)
    assert cached["flow_fwd"].shape == (4, 2, 2, *cached["frames"].shape[-2:])
    assert all(ix[0] % 2 == 0 for ix in cached["frame_index"])  # chains of cached pairs
    fwd, bwd = _flows({k: v for k, v in cached.items() if not k.startswith("flow")}, gt)
    assert (cached["flow_fwd"] - fwd).abs().max() <= 1 / 16 + 1e-6  # the cache's 1/8 px step
    assert (cached["flow_bwd"] - bwd).abs().max() <= 1 / 16 + 1e-6
    assert fwd.abs().max() > 0.5  # the world moves: the comparison is not of zeros
    precompute(source, tmp_path / "by1", estimator="gt", dts=[1], every=1, progress=False)
    with pytest.raises(ValueError, match="precompute it with --dt 2 --every 2"):
        _clips(tiny_root, flow_cache=FlowCache(tmp_path / "by1"))[0]


def test_processes_split_a_clip_batch_without_changing_it(tiny_root):
    whole = StepBatches(_clips(tiny_root), SCHEDULE)[2]
    halves = [StepBatches(_clips(tiny_root), SCHEDULE, rank, 2)[2] for rank in (0, 1)]
    assert torch.equal(torch.cat([h["frames"] for h in halves]), whole["frames"])
    assert sum((h["frame_index"] for h in halves), []) == whole["frame_index"]


@dataclass(frozen=True)
class AnchorPairs:
    """A trajectory method's view maker in miniature: per clip, the anchor frame, its
    partners and their point pairs (padded to `points`)."""
    points: int = 64

    def __call__(self, frames, rngs, *, flow_fwd, flow_bwd) -> dict:
        out = {"anchor": [], "partners": [], "p1": [], "p2": []}
        for n, rng in enumerate(rngs):
            pp = trajectory_pairs(flow_fwd[n], flow_bwd[n], rng, num_points=self.points,
                                  partners=2)
            out["anchor"].append(frames[n, pp.frames[0][0]])
            out["partners"].append(torch.tensor([t for _, t in pp.frames] + [-1] * 2)[:2])
            p1, p2 = pp.points[0]
            out["p1"].append(torch.nn.functional.pad(p1, (0, 0, 0, self.points - len(p1))))
            out["p2"].append(torch.nn.functional.pad(p2, (0, 0, 0, self.points - len(p2))))
        return {k: torch.stack(v) for k, v in out.items()}


def test_trajectory_samples_made_in_a_loader_worker_equal_those_of_the_loop(tiny_root):
    gt = get_estimator("gt")
    clips = _clips(tiny_root, clip_frames=6, clip_fps=10)
    batches = StepBatches(clips, SCHEDULE, view_maker=AnchorPairs(), needs_flow=True, flow=gt)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=1,
                                         sampler=[1], multiprocessing_context="spawn")
    (from_worker,) = list(loader)
    batch = StepBatches(clips, SCHEDULE)[1]
    in_loop = AnchorPairs()(batch["frames"], sample_rngs(SCHEDULE.seed, 1, batch["samples"]),
                            **dict(zip(("flow_fwd", "flow_bwd"), _flows(batch, gt))))
    assert set(from_worker["views"]) == set(in_loop)
    assert all(torch.equal(from_worker["views"][k], v) for k, v in in_loop.items())
    assert (in_loop["p1"] != 0).any()


def test_trajectory_pairs_are_one_tracked_point_in_the_anchor_and_in_each_partner(tiny_root):
    gt = get_estimator("gt")
    batch = StepBatches(_clips(tiny_root, clip_frames=6, clip_fps=10), SCHEDULE)[0]
    fwd, bwd = (f[0] for f in _flows(batch, gt))
    for selection in ("anchor", "random"):
        pp = trajectory_pairs(fwd, bwd, np.random.default_rng(3), num_points=300, partners=3,
                              selection=selection)
        anchor = pp.frames[0][0]
        partners = [t for a, t in pp.frames if a == anchor]
        assert len(partners) == len(pp.frames) and anchor not in partners
        assert len(set(partners)) == len(partners) and 1 <= len(partners) <= 3
        for (a, t), (pa, pt) in zip(pp.frames, pp.points):
            assert len(pa) == len(pt) > 0
            (lo, x), (hi, y) = sorted([(a, pa), (t, pt)], key=lambda e: e[0])
            for k in range(lo, hi):  # Eq. 2: move the earlier position along the flow
                x = x + sample_at(fwd[k][None], x.T[None, :, :, None])[0, :, :, 0].T
            assert torch.allclose(x, y, atol=1e-4)
    with pytest.raises(ValueError, match="known: anchor, random"):
        trajectory_pairs(fwd, bwd, np.random.default_rng(0), num_points=8, partners=1,
                         selection="nearest")


def test_a_clip_method_config_takes_clip_keys(monkeypatch):
    class ClipBYOL(get_method_class("byol")):
        samples = "clips"

    monkeypatch.setitem(METHODS, "clip_byol", ClipBYOL)
    preset = load_preset("byol", "smoke")
    with pytest.raises(ConfigError, match="unknown key.*dt_frames.*known: clip_fps, "
                                          "clip_frames, repeats"):
        validate_preset("clip_byol", preset, "x")
    with pytest.raises(ConfigError, match="x.data: clip_byol samples clips: set clip_fps"):
        validate_preset("clip_byol", {**preset, "data": {"clip_frames": 6}}, "x")
    with pytest.raises(ConfigError, match="x.data.clip_frames: must be a whole number"):
        validate_preset("clip_byol", {**preset, "data": {"clip_frames": 0, "clip_fps": 10}},
                        "x")
    data = {"clip_frames": 6, "clip_fps": 10, "repeats": 2}
    validate_preset("clip_byol", {**preset, "data": data}, "x")
    assert isinstance(make_samples("clips", None, data), FrameClips)
