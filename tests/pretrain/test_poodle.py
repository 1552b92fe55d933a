import numpy as np
import pytest
import torch

from core.decoders import SpatialDecoder
from pretrain.losses import pooled_loss
from pretrain.methods.poodle import carry_points, crop_size, subcrop_boxes, subcrop_cells
from pretrain.models import Encoder


def test_subcrop_grid_is_the_authors_3x5_cells_drawn_without_replacement():
    rng = np.random.default_rng(0)
    cells, res = subcrop_cells((512, 1024), (0.05, 0.3), 6, rng)
    assert res == 214  # round(sqrt(0.175) 512)
    assert len({tuple(c) for c in cells}) == 6
    assert cells[:, 0].max() <= 2 and cells[:, 1].max() <= 4  # rows 0-2, cols 0-4
    cells, _ = subcrop_cells((512, 1024), (0.05, 0.3), 40, rng)  # more than 15: repeats
    assert len(cells) == 40 and len({tuple(c) for c in cells}) <= 15


def test_crop_size_has_the_area_and_ratio_of_torchvisions_random_resized_crop():
    rng = np.random.default_rng(1)
    for _ in range(200):
        s = rng.uniform(0.05, 0.3)
        h, w = crop_size((512, 1024), (s, s), (3 / 4, 4 / 3), rng)
        assert h * w == pytest.approx(s * 512 * 1024, rel=0.02)
        assert 3 / 4 - 0.01 <= w / h <= 4 / 3 + 0.01


def test_subcrop_pairs_follow_the_flow_and_fall_back_to_the_same_image():
    C = torch.eye(3)  # pre-affine image = frame
    kw = dict(k=6, area=(0.05, 0.3), ratio=(3 / 4, 4 / 3), jitter=0.0)
    shift = torch.zeros(2, 48, 96)
    shift[0] = 5.0  # everything moves 5 px right
    for online, target, paired in subcrop_boxes((48, 96), C, shift,
                                               rng=np.random.default_rng(2), **kw):
        assert paired
        centre = online[0] + online[2] // 2, online[1] + online[3] // 2
        x0, y0, w, h = target
        assert x0 <= centre[0] + 5 <= x0 + w and y0 <= centre[1] <= y0 + h
        assert w * h >= 0.9 * online[2] * online[3] or x0 == 0 or x0 + w == 96 or y0 == 0 \
            or y0 + h == 48  # target area U(online, 0.3) unless cut at the border
    away = torch.full((2, 48, 96), 500.0)  # every carried point leaves the image
    for online, target, paired in subcrop_boxes((48, 96), C, away,
                                               rng=np.random.default_rng(3), **kw):
        assert not paired


def test_spatial_decoder_is_paper_shaped_and_upsamples_4x():
    enc = Encoder(arch="resnet50")
    dec = SpatialDecoder.for_trunk(enc.output_shape())
    assert [tuple(lat.weight.shape[:2]) for lat in dec.laterals] == [(2048, 1024), (2048, 512)]
    assert dec.blocks[0].conv1.weight.shape[0] == 2048 // 8  # 8x channel reduction
    out = dec(enc(torch.zeros(1, 3, 64, 96)))
    assert out.shape == (1, 2048, 8, 12)  # output stride 8


def test_pooled_loss_is_zero_for_equal_and_positive_for_different_subcrops():
    p = torch.randn(2, 3, 8, 4, 4)
    assert pooled_loss(p, p).item() == pytest.approx(0, abs=1e-6)
    assert pooled_loss(p, torch.randn(2, 3, 8, 4, 4)).item() > 0.1


def test_subcrop_centres_are_carried_through_the_flow(tiny_world):
    """A centre drawn in view 2 and carried to view 1 (backward flow) lands where the forward
    flow takes it back to the same frame-2 point, for visible pixels; without the flow it
    would be off by the motion."""
    from pretrain.augment import ViewSpec, view_matrix
    from pretrain.flow.geometry import sample_at
    pair = tiny_world.frame_pair(0, 2, 3)
    fwd, bwd = (torch.from_numpy(np.asarray(pair[k])).permute(2, 0, 1).float()
                for k in ("flow_fwd", "flow_bwd"))
    occluded = torch.from_numpy(np.asarray(pair["occlusion_bwd"]))
    rng = np.random.default_rng(0)
    spec = ViewSpec(size=(48, 96), scale=(0.9, 1.1), rotation=10, flip=False)
    box = (10.0, 8.0, 100.0, 50.0)
    A1, A2 = (view_matrix((72, 128), spec, rng, box=box) for _ in range(2))
    q2 = torch.as_tensor(rng.uniform((0, 0), (95, 47), size=(40, 2)), dtype=torch.float32)
    p2 = q2 @ A2[:2, :2].T + A2[:2, 2]
    visible = ~occluded[p2[:, 1].round().long().clamp(0, 71), p2[:, 0].round().long().clamp(0, 127)]
    errors = {}
    for name, flow in (("flow", bwd), ("no flow", torch.zeros_like(bwd))):
        q1 = carry_points(q2, A2, A1, flow)
        p1 = q1 @ A1[:2, :2].T + A1[:2, 2]
        back = p1 + sample_at(fwd[None], p1.T.reshape(1, 2, 1, -1))[0, :, 0].T
        errors[name] = (back - p2).norm(dim=1)[visible].median()
    assert visible.sum() > 10
    assert errors["flow"] < 0.5 and errors["no flow"] > 1.0, errors
