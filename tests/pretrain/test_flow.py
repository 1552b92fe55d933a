import numpy as np
import pytest
import torch

from pretrain.flow import ESTIMATORS, chain, consistency_mask, get_estimator, view_flow, warp
from pretrain.flow.geometry import apply_affine, pixel_grid, sample_at


def _t(image):
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


def _flow(f):
    return torch.from_numpy(f).permute(2, 0, 1)[None]


def _daytime_videos(world) -> list[int]:
    """World 2's daytime videos: at night the headlights move with the camera, so lit
    surfaces change brightness between frames, and DIS works on dark, noisy frames (as on
    real night driving: measured on the tiny world's night video, median EPE 0.71 px
    against 2.31 px of zero flow, where its daytime videos give 0.36-0.58 / 1.45-2.29)."""
    return [i for i, v in enumerate(world.videos)
            if world.conditions("video", v.split, v.index).get("time_of_day", "daytime")
            == "daytime"]


@pytest.fixture(scope="module")
def pair():
    """World 1's brightness-constant frames (no sensor noise): a test of the warp itself."""
    from benchmarks.synth import SyntheticWorld
    return SyntheticWorld("tiny", 0, version=1).frame_pair(0, 4, 1)


def _video_path(tiny_root, tiny_world):
    spec = tiny_world.videos[0]
    return tiny_root / "bdd100k" / "videos" / spec.split / f"{spec.name}.mov"


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_keeps_the_contract(name, pair, tiny_root, tiny_world):
    kwargs = {"weights": None} if name.startswith("raft") else {}
    est = get_estimator(name, **kwargs)
    a = torch.cat([_t(pair["image1"])] * 2)
    b = torch.cat([_t(pair["image2"])] * 2)
    meta = {"videos": [_video_path(tiny_root, tiny_world)] * 2, "frames1": [4, 4],
            "frames2": [5, 5]}
    flow = est(a, b, **meta)
    assert flow.shape == (2, 2, *a.shape[-2:]) and flow.dtype == torch.float32
    assert torch.isfinite(flow).all()


def test_unknown_estimator_and_missing_raft_weights():
    with pytest.raises(KeyError, match="dis"):
        get_estimator("pwc")
    with pytest.raises(ValueError, match="download.pytorch.org"):
        get_estimator("raft_small")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        get_estimator("raft_small", weights="nope.pth")


def test_raft_defaults_to_the_authors_weights_and_checks_the_file_is_that_release(tmp_path):
    """The authors' flow is RAFT trained on Chairs + Things (PooDLe: raft-things.pth;
    torchvision's C_T_V1 port): the default; a file of another release is refused."""
    with pytest.raises(ValueError, match=r"raft_large_C_T_V1-22a6c225\.pth"):
        get_estimator("raft_large")
    with pytest.raises(ValueError, match=r"raft_large_C_T_SKHT_V2-ff5fadd5\.pth"):
        get_estimator("raft_large", release="C_T_SKHT_V2")
    other = tmp_path / "raft_large_C_T_V1-22a6c225.pth"  # the right name, other bytes
    torch.save({"w": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match=r"is not raft_large_C_T_V1-22a6c225\.pth"):
        get_estimator("raft_large", weights=other)
    with pytest.raises(ValueError, match="C_T_V1, C_T_V2"):
        get_estimator("raft_small", weights=None, release="C_T_SKHT_V2")
    assert get_estimator("raft_small", weights=None, iterations=24).iterations == 24


@pytest.mark.parametrize("value, says", [
    ({"estimator": "raft_large", "iterations": 0}, "iterations: a whole number >= 1"),
    ({"estimator": "raft_large", "release": "sintel"}, "one of C_T_V1"),
    ({"estimator": "dis", "iterations": 24}, "RAFT settings; dis takes none"),
    ({"estimator": "raft_large", "weights": "x"}, "keys estimator, release, iterations"),
    ({"iterations": 24}, "estimator required"),
    ("pwc", "known"),
])
def test_a_bad_flow_setting_fails_naming_it(value, says):
    from pretrain.config import ConfigError, apply_overrides, load_preset, resolve
    config = {**load_preset("poodle", "smoke"), "flow": value}
    with pytest.raises(ConfigError, match=says) as e:
        resolve("poodle", config, num_videos=4, seed=0)
    assert str(e.value).startswith("poodle config.flow: ")
    config = apply_overrides(load_preset("poodle", "paper"), ["flow.iterations=12"])
    assert config["flow"] == {"estimator": "raft_large", "release": "C_T_V1", "iterations": 12}
    config = apply_overrides(load_preset("poodle", "smoke"), ["flow.estimator=farneback"])
    assert config["flow"] == {"estimator": "farneback"}


@pytest.mark.parametrize("version, bound", [(1, 0.25), (2, 0.3)])
def test_dis_end_point_error_is_far_below_zero_flow(version, bound):
    """World 1: every video; world 2: its daytime videos, whose sensor noise (std 1.8-2.1
    per channel) measured 0.26 of zero flow's error against world 1's 0.2 or less."""
    from benchmarks.synth import SyntheticWorld
    world = SyntheticWorld("tiny", 0, version=version)
    errors, zeros = [], []
    videos = _daytime_videos(world)
    assert len(videos) >= 2
    for video in videos:
        p = world.frame_pair(video, 3, 1)
        flow = get_estimator("dis")(_t(p["image1"]), _t(p["image2"]))
        gt, vis = _flow(p["flow_fwd"]), torch.from_numpy(~p["occlusion_fwd"])[None]
        errors.append((flow - gt).norm(dim=1)[vis].median().item())
        zeros.append(gt.norm(dim=1)[vis].median().item())
    assert np.mean(errors) < bound * np.mean(zeros), (errors, zeros)


def test_warping_frame2_with_true_flow_gives_frame1(pair):
    vis = torch.from_numpy(~pair["occlusion_fwd"])[None]
    a, b = _t(pair["image1"]) * 255, _t(pair["image2"]) * 255
    warped = warp(b, _flow(pair["flow_fwd"]))
    err = (warped - a).abs().mean(1)[vis].mean()
    assert err < 0.5 * (b - a).abs().mean(1)[vis].mean() and err < 10


def test_consistency_mask_recovers_ground_truth_occlusion(tiny_world):
    p = tiny_world.frame_pair(1, 3, 2)
    mask = consistency_mask(_flow(p["flow_fwd"]), _flow(p["flow_bwd"]), alpha1=0.1,
                            alpha2=0.5)[0]
    occ = torch.from_numpy(p["occlusion_fwd"])
    assert occ.any()
    assert (~mask)[occ].float().mean() > 0.9  # most occlusions found
    assert mask[~occ].float().mean() > 0.9  # most visible pixels kept


@pytest.mark.parametrize("steps", [2, 5])
def test_chaining_one_step_flows_gives_the_flow_of_the_composed_motion(steps, tiny_world):
    """PixPro-flow Eq. 1 over k - 1 steps (k = 6: its 0.5 s at 10 fps) against the world's
    exact flow from frame t to t + k - 1, where the point stays visible."""
    one_step = [tiny_world.frame_pair(2, 3 + i, 1) for i in range(steps)]
    direct = tiny_world.frame_pair(2, 3, steps)
    chained, valid = chain([_flow(p["flow_fwd"]) for p in one_step])
    vis = torch.from_numpy(~direct["occlusion_fwd"] & ~one_step[0]["occlusion_fwd"])[None]
    err = (chained - _flow(direct["flow_fwd"])).norm(dim=1)[vis & valid]
    assert (vis & valid).float().mean() > 0.3  # the tiny world moves fast: many leave
    assert err.median() < 0.05 and (err < 1).float().mean() > 0.95


def test_view_flow_composes_crops_and_affine_maps(pair):
    """view_k(q) = frame_k(A_k q); the composed flow must align the rendered views."""
    a, b = _t(pair["image1"]) * 255, _t(pair["image2"]) * 255
    H, W = a.shape[-2:]
    theta = np.deg2rad(10)
    A1 = torch.tensor([[[0.9, 0.0, 6.0], [0.0, 0.9, 4.0], [0, 0, 1]]])  # scale + crop
    A2 = torch.tensor([[[1.1 * np.cos(theta), -1.1 * np.sin(theta), 10.0],
                        [1.1 * np.sin(theta), 1.1 * np.cos(theta), -3.0], [0, 0, 1]]],
                      dtype=torch.float32)  # rotation + scale + shift
    size = (48, 96)
    grid = pixel_grid(*size)[None]
    view1 = sample_at(a, apply_affine(A1, grid))
    view2 = sample_at(b, apply_affine(A2, grid))
    F, inside = view_flow(_flow(pair["flow_fwd"]), A1, A2, size)
    occ = sample_at(torch.from_numpy(pair["occlusion_fwd"]).float()[None, None],
                    apply_affine(A1, grid), mode="nearest")[:, 0] > 0
    ok = inside & ~occ & (F + grid)[:, 0].ge(0) & (F + grid)[:, 0].le(size[1] - 1) & (
        F + grid)[:, 1].ge(0) & (F + grid)[:, 1].le(size[0] - 1)
    aligned = (warp(view2, F) - view1).abs().mean(1)[ok].mean()
    unaligned = (view2 - view1).abs().mean(1)[ok].mean()
    assert ok.float().mean() > 0.5 and aligned < 0.4 * unaligned
    same, _ = view_flow(torch.zeros(1, 2, H, W), A1, A1, size)
    assert same.abs().max() < 1e-4  # one view of one frame: zero flow
