import math

import pytest
import torch

from pretrain.health import (EmbeddingBuffer, collapse_warning, output_spreads,
                             projection_std, queue_gap, rankme, spread)
from pretrain.methods import METHODS
from pretrain.methods.base import StepContext
from pretrain.flow import get_estimator
from pretrain.train import Health, pretrain

from .test_methods import SCHEDULE, _method, _samples


def _rank_r(n: int, d: int, r: int) -> torch.Tensor:
    """[n, d] with exactly r equal non-zero singular values."""
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))
    return (u @ v.T).float()


@pytest.mark.parametrize("r", [1, 3, 17, 64])
def test_rankme_of_a_rank_r_matrix_is_r(r):
    assert rankme(_rank_r(512, 64, r)) == pytest.approx(r, rel=1e-3)


def test_rankme_of_constant_features_is_one_and_of_noise_near_full():
    assert rankme(torch.ones(300, 32) * 3.7) == pytest.approx(1.0, abs=1e-3)
    assert rankme(torch.zeros(10, 8)) == 1.0
    noise = torch.randn(4096, 32, generator=torch.Generator().manual_seed(1))
    assert 29 < rankme(noise) <= 32
    dense = noise.T.reshape(1, 32, 64, 64)  # pixels of a dense map are rows
    assert rankme(dense) == pytest.approx(rankme(noise), rel=1e-6)


def test_projection_std_is_zero_for_constant_and_one_over_sqrt_d_for_noise():
    assert projection_std(torch.ones(64, 128)) == pytest.approx(0.0, abs=1e-6)
    noise = torch.randn(4096, 128, generator=torch.Generator().manual_seed(2))
    assert projection_std(noise) == pytest.approx(1 / math.sqrt(128), rel=0.05)


def test_spread_is_one_minus_the_mean_pairwise_cosine():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(50, 16, generator=g)
    u = torch.nn.functional.normalize(z, dim=1)
    cos = u @ u.T
    mean_off_diagonal = (cos.sum() - cos.diagonal().sum()) / (50 * 49)
    assert spread(z) == pytest.approx(1 - float(mean_off_diagonal), abs=1e-6)
    assert spread(torch.ones(64, 8) * 2.5) == pytest.approx(0.0, abs=1e-9)
    dense = torch.randn(4, 8, 5, 5, generator=g)
    both = output_spreads("dense", dense)
    assert set(both) == {"spread_dense", "spread_dense_pooled"}
    assert both["spread_dense_pooled"] == pytest.approx(spread(dense.mean((2, 3))))


def test_collapse_warning_is_relative_to_the_first_step():
    message = collapse_warning({"spread_projection": 0.02}, {"spread_projection": 0.4}, None)
    assert message and "collapsing" in message and "spread_projection" in message
    # a dense head that starts at mean pairwise cosine 0.8 and keeps it is healthy
    assert collapse_warning({"spread_projection": 0.2}, {"spread_projection": 0.2}, 300) is None
    assert collapse_warning({"spread_projection": 0.0}, {}, None)  # constant from the start
    assert collapse_warning({"spread_x": 0.5}, {"spread_x": 0.5}, 1.2)  # rank collapse alone


def test_queue_gap_is_zero_at_chance_and_positive_when_keys_match():
    g = torch.Generator().manual_seed(4)
    q = torch.nn.functional.normalize(torch.randn(32, 16, generator=g), dim=1)
    queue = torch.nn.functional.normalize(torch.randn(16, 256, generator=g), dim=0)
    assert float(queue_gap(q, q, queue)) > 0.9
    far = torch.nn.functional.normalize(torch.randn(32, 16, generator=g), dim=1)
    assert abs(float(queue_gap(q, far, queue))) < 0.15


def test_health_logs_the_collapse_once_and_keeps_the_buffer_bounded():
    lines = []
    health = Health(every=1, seed=0, log=lines.append)
    for step in range(3):
        out = health.values({"outputs": {"projection": torch.ones(8, 16)},
                             "embeddings": torch.ones(8, 32),
                             "mask_kept": torch.tensor(0.25)}, step, last=False)
        assert out["proj_std"] == pytest.approx(0.0, abs=1e-6)
        assert out["spread_projection"] == pytest.approx(0.0, abs=1e-6)
        assert out["rankme"] == pytest.approx(1.0, abs=1e-3)
        assert out["mask_kept"] == 0.25
    assert len(lines) == 1 and "WARNING step 1" in lines[0]
    buffer = EmbeddingBuffer(size=100, per_step=30)
    for _ in range(10):
        buffer.add(torch.randn(64, 8))
    assert 100 <= sum(r.shape[0] for r in buffer.rows) < 130


def _views(name, tiny_root, method, step):
    from pretrain.train import StepBatches
    batches = StepBatches(_samples(tiny_root, name), SCHEDULE, view_maker=method.view_maker,
                          needs_flow=method.needs_flow, flow=get_estimator("gt"))
    return batches[step]["views"]


def _last_layer(module: torch.nn.Module) -> torch.nn.Module:
    return [m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]


def test_a_dense_map_is_watched_by_its_pixels_and_its_per_image_mean_is_logged_only():
    """Every image holding the same pixels in another arrangement (per-image means equal,
    pixels spread out) is not a collapse; every pixel the same is."""
    lines = []
    health = Health(every=0, seed=0, log=lines.append, watched=("dense",))
    g = torch.Generator().manual_seed(0)
    first = health.values({"outputs": {"dense": torch.randn(4, 8, 5, 5, generator=g)}}, 0,
                          last=False)
    common = torch.randn(8, 25, generator=g)
    same_mean = torch.stack([common[:, torch.randperm(25, generator=g)] for _ in range(4)])
    second = health.values({"outputs": {"dense": same_mean.view(4, 8, 5, 5)}}, 1, last=False)
    assert second["spread_dense_pooled"] < 1e-3 * first["spread_dense_pooled"]
    assert second["spread_dense"] > 0.5 * first["spread_dense"]
    assert "collapse_warning" not in second and lines == []
    third = health.values({"outputs": {"dense": torch.ones(4, 8, 5, 5)}}, 2, last=False)
    assert third["collapse_warning"] == 1.0 and "spread_dense " in lines[0]


SIGNALS = [(name, signal) for name in sorted(METHODS)
           for signal in METHODS[name].health_outputs]


@pytest.mark.parametrize("name, signal", SIGNALS)
def test_a_collapsed_head_output_raises_the_warning_naming_it(name, signal, tiny_root):
    """A healthy first step, then the module that makes `signal` is made to give one output
    for every input (its last layer: zero weights, a constant bias), as a collapsed run
    does: the next step warns and names that output if the warning reads it
    (``collapse_outputs``); a logged-only output (a predictor's, PixPro's PPM) stays
    silent."""
    method = _method(name).train()
    lines = []
    health = Health(every=0, seed=0, log=lines.append, watched=method.watched_outputs())
    with torch.no_grad():
        method.before_step(StepContext(step=0, total=2, seed=0))
        method(_views(name, tiny_root, method, 0))
        first = health.values(method.pop_observed(), 0, last=False)
        assert "collapse_warning" not in first and lines == []
        assert first[f"spread_{signal}"] > 0.01
        layer = _last_layer(getattr(method, METHODS[name].health_outputs[signal]))
        layer.weight.zero_()
        layer.bias.fill_(1.0)
        method.before_step(StepContext(step=1, total=2, seed=0))
        method(_views(name, tiny_root, method, 1))
        second = health.values(method.pop_observed(), 1, last=False)
    assert second[f"spread_{signal}"] < 1e-3
    if signal in method.watched_outputs():
        assert second["collapse_warning"] == 1.0
        assert len(lines) == 1 and f"spread_{signal}" in lines[0]
    else:
        assert "collapse_warning" not in second and lines == []


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_reads_a_collapse_output_it_declares(name):
    cls = METHODS[name]
    watched = cls.collapse_outputs or tuple(cls.health_outputs)
    assert watched and set(watched) <= set(cls.health_outputs)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_curve_has_health_and_the_loss_is_only_the_loss_terms(name, tiny_root, tmp_path):
    curve = pretrain(_method(name), _samples(tiny_root, name), SCHEDULE, out_dir=tmp_path,
                     stop_after=2, estimator=get_estimator("gt"), progress=False,
                     log=lambda *_: None, health_every=1)
    for entry in curve:
        terms = [v for k, v in entry.items() if k.startswith("loss_")]
        assert terms and entry["loss"] == pytest.approx(sum(terms), rel=1e-6)
        assert entry["grad_norm"] > 0 and 0 < entry["proj_std"] <= 1
        assert 1 <= entry["rankme"] <= 512
        assert "collapse_warning" not in entry  # two healthy smoke steps
        for signal in METHODS[name].health_outputs:
            assert 0 < entry[f"spread_{signal}"] <= 2
        if "queue_full" in curve[-1]:  # queue methods: 0 real keys at step 1, then some
            assert 0 <= entry["queue_full"] <= 1 and entry["chance_loss"] > 0
            assert -2 <= entry["queue_gap"] <= 2
    has_queue = "queue" in dict(_method(name).named_buffers())
    assert ("queue_full" in curve[-1]) == has_queue
    if has_queue:
        assert curve[0]["queue_full"] == 0 < curve[1]["queue_full"]
        if METHODS[name].needs_flow:
            assert 0 < entry["mask_kept"] <= 1
        else:
            assert "mask_kept" not in entry
