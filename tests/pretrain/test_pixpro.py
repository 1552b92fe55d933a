"""PixPro and PixPro with optical flow: the PPM, the positives Omega, the loss, the mask."""
import math

import numpy as np
import pytest
import torch

from pretrain.augment import COLOURS, ViewSpec, crop_matrix, crop_views
from pretrain.correspondence import bin_centres, carry_points, positive_bins
from pretrain.losses import pixel_consistency_loss
from pretrain.methods.pixpro import PixProViews, pixel_propagation


def test_pixel_propagation_with_gamma_2_matches_a_hand_computation():
    r = 1 / math.sqrt(2)
    a, b, c, d = (1.0, 0.0), (0.0, 1.0), (r, r), (-1.0, 0.0)  # a 2x2 map of 2-d features
    x = torch.tensor([a, b, c, d]).T.reshape(1, 2, 2, 2)
    # s = max(cos, 0)^2: a.b = 0, a.c = r, a.d = -1, b.c = r, b.d = 0, c.d = -r
    expected = torch.tensor([[1 + 0.5 * r, 0.5 * r], [0.5 * r, 1 + 0.5 * r],
                             [0.5 + r, 0.5 + r], [-1.0, 0.0]]).T.reshape(1, 2, 2, 2)
    y = pixel_propagation(x, 3 * x, gamma=2.0)  # the value is normalised: 3x acts as x
    assert torch.allclose(y, expected, atol=1e-6)


def _authors_geometric_positives(box1, box2, flip1, flip2, W, H, grid, ratio=0.7):
    """PixPro's positives as its code computes them (zdaxie/PixPro contrast/models/PixPro.py
    regression_loss; the same lines in PixPro-flow's without flow): boxes (x0, y0, w, h) in
    frame pixels, normalised as RandomResizedCropCoord does, x swapped by a flip."""
    def centres(box, flip):
        j, i, w, h = box
        x0, y0, x1, y1 = j / (W - 1), i / (H - 1), (j + w - 1) / (W - 1), (i + h - 1) / (H - 1)
        if flip:
            x0, x1 = x1, x0
        bw, bh = (x1 - x0) / grid, (y1 - y0) / grid
        ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        cx = ((xs + 0.5) * bw + x0) * (W - 1)
        cy = ((ys + 0.5) * bh + y0) * (H - 1)
        return np.stack([cx.ravel(), cy.ravel()], 1), math.hypot(bw * (W - 1), bh * (H - 1))
    c1, d1 = centres(box1, flip1)
    c2, d2 = centres(box2, flip2)
    dist = np.linalg.norm(c1[:, None] - c2[None], axis=-1) / max(d1, d2)
    return dist < ratio, dist


def test_omega_with_an_identity_flow_is_pixpros_geometric_positives():
    H, W, size, grid = 360, 640, (112, 112), 7
    rng = np.random.default_rng(0)
    agree = total = 0
    for _ in range(40):
        boxes = []
        for _ in range(2):
            w = int(rng.integers(150, 360))
            boxes.append((int(rng.integers(0, W - w)), int(rng.integers(0, H - w)), w, w))
        flips = rng.uniform(size=2) < 0.5
        A = []
        for box, flip in zip(boxes, flips):
            f = torch.eye(3, dtype=torch.float64)
            if flip:
                f[0, 0], f[0, 2] = -1, size[1] - 1
            A.append((crop_matrix(box, size) @ f).float()[None])
        (c1, d1), (c2, d2) = (bin_centres(a, (grid, grid), size) for a in A)
        moved, held = carry_points(c1, torch.zeros(1, 2, H, W), torch.ones(1, H, W, dtype=bool))
        ours = positive_bins(moved, held, c2, d1, d2, 0.7)[0].numpy()
        theirs, dist = _authors_geometric_positives(*boxes, *flips, W, H, grid)
        clear = np.abs(dist - 0.7) > 0.05  # half-pixel conventions move only borderline pairs
        assert (ours == theirs)[clear].all()
        agree, total = agree + (ours == theirs).sum(), total + ours.size
        assert ours.any() == theirs.any()
    assert agree / total > 0.99


def test_the_loss_is_minus_2_for_equal_maps_and_rises_when_they_are_shuffled():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 16, 4, 4, generator=g)
    box = (10.0, 20.0, 80.0, 80.0)
    A = crop_matrix(box, (64, 64)).float()[None].expand(3, 3, 3)
    c, d = bin_centres(A, (4, 4), (64, 64))
    moved, held = carry_points(c, torch.zeros(3, 2, 120, 160), torch.ones(3, 120, 160,
                                                                           dtype=bool))
    pos = positive_bins(moved, held, c, d, d, 0.7)
    assert torch.equal(pos, torch.eye(16, dtype=bool).expand(3, 16, 16))  # each bin itself
    assert pixel_consistency_loss(z, z, pos).item() == pytest.approx(-2, abs=1e-5)
    shuffled = z.flatten(2)[:, :, torch.randperm(16, generator=g)].view_as(z)
    assert pixel_consistency_loss(shuffled, z, pos).item() > -1.5
    none = torch.zeros_like(pos)
    assert pixel_consistency_loss(z, z, none).item() == 0  # no positive adds nothing


def _maker(**kw):
    return PixProViews(ViewSpec(size=(64, 64)), COLOURS["byol"], grid=(4, 4),
                       alpha=(0.01, 0.5), **kw)


def test_a_clip_with_zero_flow_gives_pixpros_positives_of_one_frame():
    g = torch.Generator().manual_seed(1)
    frame = torch.rand(2, 1, 3, 72, 128, generator=g)
    clip = frame.expand(2, 4, 3, 72, 128)
    zero = torch.zeros(2, 3, 2, 72, 128)
    rngs = lambda: [np.random.default_rng([5, n]) for n in range(2)]  # noqa: E731
    one = _maker()(frame, rngs())
    three = _maker()(clip, rngs(), flow_fwd=zero, flow_bwd=zero)
    assert torch.equal(one["view1"], three["view1"]) and torch.equal(one["view2"], three["view2"])
    assert torch.equal(one["pos12"], three["pos12"]) and one["pos12"].any()
    assert torch.equal(one["pos21"], three["pos21"]) and (three["held"] == 1).all()


def test_a_flow_moves_the_positives_and_occluded_bins_lose_theirs():
    """A pan of 2 x 10 px over a 3-frame clip: view-1 bins pair with the view-2 bins near
    their place 20 px to the right (Eq. 1 + Omega); where the step back disagrees (right of
    x = 150 in the last frame), Eq. 3 leaves the bin without positives."""
    H, W = 120, 240
    fwd = torch.zeros(1, 2, 2, H, W)
    fwd[:, :, 0] = 10.0
    bwd = -fwd.clone()
    bwd[:, 1, :, :, 150:] = 0.0  # flow_bwd[:, 1]: last frame -> middle one
    maker = _maker()
    views = maker(torch.rand(1, 3, 3, H, W), [np.random.default_rng(1)], flow_fwd=fwd,
                  flow_bwd=bwd)
    A = crop_views({"1": torch.rand(1, 3, H, W), "2": torch.rand(1, 3, H, W)},
                   [np.random.default_rng(1)], maker.spec, maker.colours, matrices=True)
    (c1, d1), (c2, d2) = (bin_centres(A[k], (4, 4), (64, 64)) for k in ("A1", "A2"))
    pan = torch.zeros(1, 2, H, W)
    pan[:, 0] = 20.0
    moved, _ = carry_points(c1, pan, torch.ones(1, H, W, dtype=bool))
    unmasked = positive_bins(moved, torch.ones(1, 16, dtype=bool), c2, d1, d2, 0.7)[0]
    pos, x = views["pos12"][0], moved[0, 0]
    visible, occluded = x < 148, x > 152
    assert unmasked[visible].any() and unmasked[occluded].any()  # both cases are tested
    assert torch.equal(pos[visible], unmasked[visible])
    assert not pos[occluded].any() and views["held"][0] < 1


def test_the_authors_mask_is_the_normalised_reading_of_eq_3():
    """A cycle error of 2 px at 72x128 passes the authors' test (flows in [-1, 1] units,
    alpha2 / frame diagonal: about 3.7 px allowed here) and fails Eq. 3 in pixels
    (alpha2 = 0.5 px^2: about 0.8 px)."""
    H, W = 72, 128
    fwd = torch.zeros(1, 2, H, W)
    fwd[:, 0] = 3.0
    inside = (slice(None), slice(None), slice(0, W - 6))
    for error, normalised, pixels in ((0.5, True, True), (2.0, True, False), (5.0, False, False)):
        bwd = torch.zeros(1, 2, H, W)
        bwd[:, 0] = -3.0 + error
        got_n = _maker()._consistent(fwd, bwd)[inside]
        got_p = _maker(mask_units="pixels")._consistent(fwd, bwd)[inside]
        assert bool(got_n.all()) == normalised and bool(got_n.any()) == normalised
        assert bool(got_p.all()) == pixels and bool(got_p.any()) == pixels


def test_every_residual_block_starts_as_the_identity_in_both_encoders():
    """zdaxie/PixPro and PixPro-with-OpticalFlow contrast/resnet.py L164-173: the last
    BatchNorm gamma of each residual block at 0; the momentum encoder starts equal."""
    from pretrain.config import load_preset
    from pretrain.methods import get_method_class
    method = get_method_class("pixpro")(**load_preset("pixpro", "smoke")["model"])
    last = [b.bn2 for b in method.encoder.modules() if type(b).__name__ == "BasicBlock"]
    assert len(last) == 8 and all(torch.count_nonzero(bn.weight) == 0 for bn in last)
    target = method.target_encoder.state_dict()
    assert all(torch.equal(v, target[k]) for k, v in method.encoder.state_dict().items())
    off = get_method_class("pixpro")(**{**load_preset("pixpro", "smoke")["model"],
                                          "zero_init_residual": False})
    assert all(torch.count_nonzero(b.bn2.weight) > 0 for b in off.encoder.modules()
               if type(b).__name__ == "BasicBlock")
