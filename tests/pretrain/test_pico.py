import math

import numpy as np
import pytest
import torch

from pretrain.augment import ColourSpec, ViewSpec
from pretrain.config import apply_overrides, load_preset
from pretrain.data.samples import make_samples
from pretrain.data.video import VideoSource
from pretrain.methods import get_method_class
from pretrain.methods.pico import PointViews, pixel_infonce_loss, point_features
from pretrain.train import PretrainSchedule, pretrain
from readout.backbone import read_checkpoint, save_checkpoint, scratch_checkpoint
from tests.helpers import tiny_store


def test_pixel_infonce_is_zero_for_a_clear_positive_and_log_k_plus_1_for_equal_keys():
    C, K = 8, 64
    q = torch.nn.functional.normalize(torch.randn(5, C), dim=1)
    negatives = torch.nn.functional.normalize(torch.randn(C, K), dim=0)
    far = negatives - (q.T @ (q @ negatives)) / 5  # pushed away from every query
    far = torch.nn.functional.normalize(far - 2 * q.mean(0)[:, None], dim=0)
    assert pixel_infonce_loss(q, q, far, temperature=0.05) < 1e-3
    same = q[:1].T.expand(C, K)  # every negative is the positive
    loss = pixel_infonce_loss(q[:1], q[:1], same, temperature=0.2)
    assert loss.item() == pytest.approx(math.log(K + 1), rel=1e-5)


def test_points_read_the_cell_their_coordinates_scaled_by_one_quarter_fall_in():
    z = torch.arange(2 * 3 * 4 * 5, dtype=torch.float).reshape(2, 3, 4, 5)
    xy = torch.tensor([[[9.5, 5.0], [0.0, 0.0]], [[19.9, 15.9], [float("nan"), 3.0]]])
    out = point_features(z, xy, stride=4)  # [2, 2, 3]
    assert torch.equal(out[0, 0], z[0, :, 1, 2]) and torch.equal(out[0, 1], z[0, :, 0, 0])
    assert torch.equal(out[1, 0], z[1, :, 3, 4])


def test_static_pairs_are_one_frame_position_in_both_views():
    """A frame that is linear in x and y: bilinear sampling is exact, so a pair's two view
    pixels hold the same value iff they are the same frame position."""
    H, W = 48, 80
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    frame = torch.stack([xs / W, ys / H, (xs + ys) / (W + H)])[None, None]  # [1, 1, 3, H, W]
    plain = ColourSpec(jitter=(0, 0, 0, 0), jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    maker = PointViews(ViewSpec(size=(32, 32), area=(0.3, 1.0)), {"1": plain, "2": plain},
                       correspondence="static", points=64)
    views = maker(frame, [np.random.default_rng(s) for s in range(1)])
    pairs = views["pairs"][0]
    pairs = pairs[torch.isfinite(pairs[:, 0])]
    assert len(pairs) > 5

    def at(view, q):
        from pretrain.flow.geometry import sample_at
        return sample_at(view[None], q.T[None, :, :, None])[0, :, :, 0].T

    assert torch.allclose(at(views["view1"][0], pairs[:, :2]),
                          at(views["view2"][0], pairs[:, 2:]), atol=1e-4)


def _schedule(steps=2):
    return PretrainSchedule(steps=steps, batch_size=2, optimizer="sgd", lr=0.1,
                            weight_decay=1e-4, checkpoint_every=1, seed=1)


def _pico(tiny_root, **model):
    config = apply_overrides(load_preset("pico", "smoke"),
                             [f"model.{k}={v}" for k, v in model.items()]
                             + [f"data.trajectories={tiny_store(tiny_root)}"])
    source = VideoSource(tiny_root / "bdd100k" / "videos")
    torch.manual_seed(0)
    return (get_method_class("pico")(**config["model"]),
            make_samples("tracks", source, config["data"], seed=2))


def test_a_frozen_moco_initialised_encoder_stays_bit_identical_while_the_decoder_learns(
        tiny_root, tmp_path):
    init = tmp_path / "moco.pth"
    save_checkpoint(scratch_checkpoint("resnet18", seed=7), init)
    method, samples = _pico(tiny_root, init=init)
    assert method.deviations() == []
    before = {k: v.clone() for k, v in method.encoder.state_dict().items()}  # + BN buffers
    decoder = {k: p.detach().clone() for k, p in method.decoder.named_parameters()}
    queue = method.queue.clone()
    curve = pretrain(method, samples, _schedule(), out_dir=tmp_path / "run", progress=False,
                     log=lambda *_: None)
    assert all(np.isfinite(c["loss"]) for c in curve)
    after = method.encoder.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    moved = [k for k, p in method.decoder.named_parameters() if not torch.equal(p, decoder[k])]
    assert len(moved) >= 0.9 * len(decoder)
    assert not torch.equal(method.queue, queue) and int(method.queue_ptr) > 0
    exported = read_checkpoint(tmp_path / "run" / "backbone.pth")
    ref = read_checkpoint(init)["state_dict"]
    assert all(torch.equal(exported["state_dict"][k], ref[k]) for k in ref)
    assert exported["decoder"]["kind"] == "fpn" and "deviations" not in exported["meta"]


def test_without_an_initialisation_the_encoder_trains_and_the_run_says_it_deviates(
        tiny_root, tmp_path):
    method, samples = _pico(tiny_root)
    assert not method.frozen and "no MoCo-v2 initialisation" in method.deviations()[0]
    pretrain(method, samples, _schedule(1), out_dir=tmp_path, progress=False,
             log=lambda *_: None)
    meta = read_checkpoint(tmp_path / "backbone.pth")["meta"]
    assert "no MoCo-v2 initialisation" in meta["deviations"][0]


def test_tracked_samples_pair_the_stored_positions_of_one_trajectory(tiny_root):
    _, samples = _pico(tiny_root)
    item = samples[0]
    (anchor, partner), = item["frame_index"][:1].tolist()
    traj, _ = samples.trajectories(0)
    pairs = item["points"][0, 0]
    pairs = pairs[torch.isfinite(pairs[:, 0])]
    assert len(pairs) > 0 and anchor != partner
    both = traj.active(anchor) & traj.active(partner)
    stored = torch.cat([traj.points[both, anchor], traj.points[both, partner]], dim=1)
    assert all((stored == row).all(1).any() for row in pairs)


def test_a_tracks_method_without_a_store_or_with_a_bad_config_value_is_refused(tiny_root):
    from pretrain.config import ConfigError, resolve
    source = VideoSource(tiny_root / "bdd100k" / "videos")
    with pytest.raises(ValueError, match="data.trajectories: this method reads a trajectory"):
        make_samples("tracks", source, load_preset("pico", "smoke")["data"])
    for override, says in [("data.frame_selection=nearest", "is not one of anchor, random"),
                           ("data.delta=0", "data.delta"),
                           ("model.init=/no/such.pth", "model.init: no file /no/such.pth")]:
        config = apply_overrides(load_preset("pico", "smoke"), [override])
        with pytest.raises(ConfigError, match=says):
            resolve("pico", config, num_videos=4, seed=0)


def test_pico_and_its_static_baselines_differ_exactly_as_sec_4_says(tiny_root):
    """On one seed and step the loop hands the three the same videos, anchor frames, crops
    and point draws (a paired comparison); PiCO and Static (Video) differ only in where a
    point lands in the second frame (tracked vs the same frame position), Static (Video)
    and Static (Frames) in the second frame (another frame vs the anchor again) and the
    points (PiCO's vs uniform)."""
    from pretrain.train import StepBatches
    from tests.helpers import data_overrides
    schedule = PretrainSchedule(steps=1, batch_size=2, optimizer="sgd", lr=0.1,
                                weight_decay=1e-4, seed=5)
    source = VideoSource(tiny_root / "bdd100k" / "videos")
    views = {}
    for name in ("pico", "static_video", "static_frame"):
        config = apply_overrides(load_preset(name, "smoke"), data_overrides(name, tiny_root))
        method = get_method_class(name)(**config["model"])
        samples = make_samples(method.samples, source, config["data"], seed=5)
        views[name] = StepBatches(samples, schedule, view_maker=method.view_maker)[0]["views"]
    pico, video, frame = views["pico"], views["static_video"], views["static_frame"]
    assert torch.equal(pico["view1"], video["view1"]) and torch.equal(pico["view2"], video["view2"])
    def shared(a, b):
        """Pairs of a and b (per sample) with the same view-1 point: a's and b's rows."""
        rows_a, rows_b = [], []
        for pa, pb in zip(a, b):
            pa, pb = pa[torch.isfinite(pa[:, 0])], pb[torch.isfinite(pb[:, 0])]
            same = (pa[:, None, :2] == pb[None, :, :2]).all(-1)  # [Pa, Pb]
            i, j = same.nonzero(as_tuple=True)
            rows_a.append(pa[i])
            rows_b.append(pb[j])
        return torch.cat(rows_a), torch.cat(rows_b), sum(int(torch.isfinite(x[:, 0]).sum())
                                                          for x in b)

    p, v, kept = shared(pico["pairs"], video["pairs"])
    assert len(p) > 0.5 * kept > 2  # Static (Video) pairs PiCO's points (both views in view)
    moved = (p[:, 2:] - v[:, 2:]).norm(dim=1)
    assert (moved > 0.5).float().mean() > 0.5  # tracked: the point moved in the video
    assert torch.equal(pico["view1"], frame["view1"])  # the anchor frame, the same crop
    assert not torch.allclose(video["view2"], frame["view2"])  # another frame vs the anchor
    _, f, kept = shared(video["pairs"], frame["pairs"])
    assert kept > 5 and len(f) == 0  # PiCO's points vs uniform ones
