"""View geometry, colour recipes and optimizer groups of the flow-equivariance methods, checked
against the authors' code (agentic-learning-ai-lab/poodle)."""
import numpy as np
import pytest
import torch

from pretrain import augment
from pretrain.augment import COLOURS, ColourSpec, crop_matrix, photometric
from pretrain.config import load_preset
from pretrain.correspondence import paired_views, pixel_scale, resized_frame_box
from pretrain.flow.geometry import consistency_mask
from pretrain.methods import get_method_class
from pretrain.train import PretrainSchedule, make_optimizer


def _ks_uniform(x: np.ndarray, lo: float, hi: float) -> float:
    """Kolmogorov-Smirnov distance between the sample x and U(lo, hi)."""
    x = np.sort((x - lo) / (hi - lo))
    n = len(x)
    return float(max((np.arange(1, n + 1) / n - x).max(), (x - np.arange(n) / n).max()))


@pytest.mark.parametrize("native", [(720, 1280), (90, 160)])
def test_crops_are_the_authors_resize_then_random_crop(native):
    """Frames resized to 1080x1920 x s, s ~ U(0.75, 1.25), then a 512x1024 crop: the crop
    covers 0.253 / s^2 of the frame whatever its own resolution, at a uniform offset, and the
    occlusion test's pixel scale is the resized frame's."""
    H, W = native
    rng = np.random.default_rng(0)
    boxes = np.array([resized_frame_box(rng, H, W, size=(512, 1024), initial_size=(1080, 1920),
                                        initial_scale=(0.75, 1.25)) for _ in range(4000)])
    x0, y0, cw, ch = boxes.T
    s_x, s_y = 1024 / (1920 * cw / W), 512 / (1080 * ch / H)  # the scale behind each box
    assert np.allclose(s_x, s_y, atol=2e-3)
    n = len(boxes)
    assert _ks_uniform(s_x, 0.75, 1.25) < 1.95 / np.sqrt(n)  # KS test at the 0.1 % level
    # the earlier draw zoomed the native frame by s: boxes 1080 / 720 = 1.5x wider on BDD
    assert _ks_uniform(1024 / (cw / W * 1280) if H == 720 else s_x / 1.5, 0.75, 1.25) > 0.1
    area = cw * ch / (H * W)
    assert area.min() >= 0.253 / 1.25 ** 2 - 1e-3 and area.max() <= 0.253 / 0.75 ** 2 + 2e-3
    offset = x0 / (W - cw)
    assert (offset >= 0).all() and (offset <= 1).all() and abs(offset.mean() - 0.5) < 0.02
    C = torch.stack([crop_matrix(tuple(b), (512, 1024)) for b in boxes[:50]])
    expected = np.stack([1920 * s_x[:50] / W, 1080 * s_y[:50] / H], axis=1)
    assert np.allclose(pixel_scale(C).numpy(), expected, rtol=1e-6)


def test_the_occlusion_test_is_measured_in_the_scaled_pixels():
    """A forward-backward mismatch of 0.6 px passes alpha2 = 0.5 px^2 in frame pixels but
    fails once the frame is resized 1.5x (0.9 px)."""
    fwd = torch.zeros(1, 2, 8, 8)
    bwd = torch.zeros(1, 2, 8, 8)
    bwd[:, 0] = 0.6
    kw = dict(alpha1=0.0, alpha2=0.5)
    assert consistency_mask(fwd, bwd, **kw).all()
    assert not consistency_mask(fwd, bwd, scale=torch.tensor([[1.5, 1.5]]), **kw).any()


@pytest.mark.parametrize("method", ["flowe", "poodle"])
def test_flow_equivariance_methods_use_simclr_colour_on_both_views(method):
    model = {**load_preset(method, "paper")["model"], "arch": "resnet18", "hidden": 8}
    m = get_method_class(method)(**model)
    colours = m.view_maker.colours
    assert colours == COLOURS["simclr"] and colours["1"] == colours["2"]
    spec = COLOURS["simclr"]["1"]
    assert (spec.jitter, spec.jitter_p, spec.gray_p, spec.blur_p, spec.blur_kernel,
            spec.solarize_p) == ((0.8, 0.8, 0.8, 0.2), 0.8, 0.2, 0.5, 0.1, 0.0)
    assert m.view_maker.spec.flip is (method == "poodle")  # PooDLe's code flips its global views


def test_byol_keeps_its_asymmetric_colour():
    one, two = COLOURS["byol"]["1"], COLOURS["byol"]["2"]
    assert (one.jitter, one.blur_p, one.solarize_p) == ((0.4, 0.4, 0.2, 0.1), 1.0, 0.0)
    assert (two.blur_p, two.solarize_p) == (0.1, 0.2)


def test_simclr_blur_kernel_is_a_tenth_of_the_side_rounded_up_to_odd(monkeypatch):
    seen = []
    real = augment.TF.gaussian_blur
    monkeypatch.setattr(augment.TF, "gaussian_blur",
                        lambda img, k, s: seen.append(k) or real(img, k, s))
    spec = ColourSpec(jitter_p=0.0, gray_p=0.0, blur_p=1.0, blur_kernel=0.1)
    photometric(torch.rand(3, 48, 96), np.random.default_rng(0), spec)
    assert seen == [[11, 7]]  # [x, y]: round_up_odd(9.6) = 11, round_up_odd(4.8) = 7


def test_pre_affine_images_are_coloured_then_transformed():
    """The global view is the coloured pre-affine image under the view's affine: with no
    affine and no flip the two are equal."""
    from pretrain.augment import ViewSpec
    frames = torch.rand(2, 3, 36, 64)
    spec = ViewSpec(size=(24, 48), flip=False)
    box = lambda rng, H, W: (4.0, 2.0, 48.0, 24.0)  # noqa: E731
    views = paired_views(frames, frames, [np.random.default_rng(k) for k in range(2)], spec,
                         box, COLOURS["simclr"])
    assert torch.allclose(views["view1"], views["pre1"], atol=1e-5)
    assert torch.equal(views["A1"], views["C"])


def test_adamw_has_the_authors_groups_and_eps():
    m = get_method_class("poodle")(**load_preset("poodle", "smoke")["model"])
    named = m.trainable_named_parameters()
    opt = make_optimizer(named, PretrainSchedule(steps=1, batch_size=1, optimizer="adamw",
                                                 lr=1e-3, weight_decay=0.01))
    no_decay, decay = opt.param_groups
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01
    assert decay["eps"] == 1e-6 and decay["betas"] == (0.9, 0.999)
    names = {id(p): n for n, p in named}
    assert all(p.ndim > 1 and not names[id(p)].endswith(".bias") for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])
    assert any(p.ndim == 4 for p in decay["params"])
    assert len(no_decay["params"]) + len(decay["params"]) == len(named)
