import math

import pytest
import torch

from pretrain.health import (EmbeddingBuffer, collapse_warning, projection_std, rankme)
from pretrain.methods import METHODS
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


def test_collapse_warning_fires_on_constant_features_only():
    constant = torch.ones(256, 64)
    message = collapse_warning(projection_std(constant), 64, rankme(constant))
    assert message and "collapsing" in message and "RankMe 1.00" in message
    noise = torch.randn(256, 64, generator=torch.Generator().manual_seed(3))
    assert collapse_warning(projection_std(noise), 64, rankme(noise)) is None
    assert collapse_warning(projection_std(noise), 64, 1.2)  # dimensional collapse alone


def test_health_logs_the_collapse_once_and_keeps_the_buffer_bounded():
    lines = []
    health = Health(every=1, seed=0, log=lines.append)
    for step in range(3):
        out = health.values({"projections": torch.ones(8, 16), "embeddings": torch.ones(8, 32),
                             "mask_kept": torch.tensor(0.25)}, step, last=False)
        assert out["proj_std"] == pytest.approx(0.0, abs=1e-6)
        assert out["rankme"] == pytest.approx(1.0, abs=1e-3)
        assert out["mask_kept"] == 0.25
    assert len(lines) == 1 and "WARNING step 1" in lines[0]
    buffer = EmbeddingBuffer(size=100, per_step=30)
    for _ in range(10):
        buffer.add(torch.randn(64, 8))
    assert 100 <= sum(r.shape[0] for r in buffer.rows) < 130


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
        if METHODS[name].needs_flow:
            assert 0 < entry["mask_kept"] <= 1
        else:
            assert "mask_kept" not in entry
