import numpy as np
import pytest
import torch

from core.decoders import SpatialDecoder
from pretrain.losses import pooled_loss
from pretrain.methods.poodle import carry_points, centred_box, grid_centres
from pretrain.models import Encoder


def test_grid_centres_take_distinct_cells_first():
    rng = np.random.default_rng(0)
    c = grid_centres((512, 1024), (0.05, 0.3), 6, rng)  # d = 214 px: a 2 x 4 grid
    cells = {(int((x + 0.5) // 256), int((y + 0.5) // 256)) for x, y in c}
    assert len(cells) == 6 and c[:, 0].min() >= -0.5 and c[:, 0].max() <= 1023.5
    c = grid_centres((64, 64), (0.05, 0.3), 6, rng)  # one cell: repeats allowed
    assert c.shape == (6, 2)


def test_centred_box_has_the_area_and_stays_inside():
    rng = np.random.default_rng(1)
    for centre in ((0, 0), (100, 50), (127, 63)):
        x0, y0, w, h = centred_box(centre, (64, 128), (0.1, 0.1), (1.0, 1.0), rng)
        assert w * h == pytest.approx(0.1 * 64 * 128)
        assert 0 <= x0 <= 128 - w and 0 <= y0 <= 64 - h


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
    q2 = torch.as_tensor(grid_centres((48, 96), (0.05, 0.3), 40, rng), dtype=torch.float32)
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
