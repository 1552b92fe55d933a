import math

import pytest
import torch
import torchvision
from torch import nn

from core.inputs import normalize
from pretrain.checkpoint import backbone_checkpoint, write_checkpoint
from pretrain.flow.geometry import in_view
from pretrain.losses import byol_loss, dense_equivariance_loss
from pretrain.models import Encoder, mlp
from pretrain.optim import LARS, ema_momentum, ema_update, warmup_cosine


def test_dense_loss_is_zero_for_identical_views_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 8, 6, 10, generator=g)
    identity = torch.zeros(2, 2, 6, 10)
    assert dense_equivariance_loss(z, z, identity).item() == pytest.approx(0, abs=1e-6)
    other = torch.randn(2, 8, 6, 10, generator=g)
    assert dense_equivariance_loss(z, other, identity).item() > 0.5


def test_pure_translation_with_an_equivariant_encoder_gives_zero_loss():
    """view2 = view1 shifted by d, so view1(p) = view2(p + d): the flow is d everywhere."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 3, padding=1, padding_mode="circular")  # translation equivariant
    image = torch.randn(1, 3, 24, 32)
    dx, dy = 3, 2
    shifted = torch.roll(image, shifts=(dy, dx), dims=(2, 3))
    flow = torch.zeros(1, 2, 24, 32)
    flow[:, 0], flow[:, 1] = dx, dy
    with torch.no_grad():
        loss = dense_equivariance_loss(conv(image), conv(shifted), flow, in_view(flow))
        wrong = dense_equivariance_loss(conv(image), conv(shifted), torch.zeros_like(flow))
    assert loss.item() < 1e-6 and wrong.item() > 0.1


def test_byol_loss_range():
    p = torch.randn(4, 16)
    assert byol_loss(p, p).item() == pytest.approx(0, abs=1e-6)
    assert byol_loss(p, -p).item() == pytest.approx(4, abs=1e-5)


def test_ema_follows_byol_schedule_and_formula():
    assert ema_momentum(0, 100) == pytest.approx(0.996)
    assert ema_momentum(100, 100) == pytest.approx(1.0)
    assert ema_momentum(50, 100) == pytest.approx(1 - 0.004 / 2)
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o.detach(), rtol=1e-6, atol=1e-7)


def test_lars_step_matches_the_formula():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # |w| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=0.1, momentum=0.9, weight_decay=0.5, eta=0.01)
    w.grad, b.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([2.0])
    opt.step()
    g = torch.tensor([[0.0, 1.0]]) + 0.5 * torch.tensor([[3.0, 4.0]])
    expected = torch.tensor([[3.0, 4.0]]) - 0.1 * (0.01 * 5 / g.norm()) * g
    assert torch.allclose(w, expected)
    assert torch.allclose(b, torch.tensor([1.0 - 0.1 * 2.0]))  # 1-d: no decay, no trust ratio


def test_warmup_cosine():
    assert warmup_cosine(0, 100, base=1.0, warmup=10) == 0.0  # BYOL's / PooDLe's k / w
    assert warmup_cosine(9, 100, base=1.0, warmup=10) == pytest.approx(0.9)
    assert warmup_cosine(10, 100, base=1.0, warmup=10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, base=1.0, warmup=10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, base=1.0, warmup=10) == pytest.approx(0.0)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_encoder_output_stride_and_torchvision_keys(arch):
    enc = Encoder(arch=arch, output_stride=8)
    out = enc(torch.randn(1, 3, 64, 64))
    assert {k: 64 // v.shape[-1] for k, v in out.items()} == {
        "res2": 4, "res3": 8, "res4": 8, "res5": 8}
    assert {k: v.shape[1] for k, v in out.items()} == enc.channels
    tv = {k for k in getattr(torchvision.models, arch)(weights=None).state_dict()
          if not k.startswith("fc.")}
    assert set(enc.backbone_state_dict()) == tv
    head = mlp(enc.channels["res5"], 64, 16, dense=True)
    assert head(out["res5"]).shape == (1, 16, 8, 8)


def test_exported_backbone_loads_in_readout_with_the_same_features(tmp_path):
    """The checkpoint contract between the packages: same keys, same dilated features."""
    from readout.backbone import build_backbone, read_checkpoint
    torch.manual_seed(0)
    enc = Encoder(arch="resnet18", output_stride=8).eval()
    path = write_checkpoint(backbone_checkpoint(
        arch="resnet18", state_dict=enc.backbone_state_dict(), method="flowe",
        pretrain_data="synthetic", epochs=1, iterations=2, config={"seed": 0}),
        tmp_path / "flowe.pth")
    ck = read_checkpoint(path)
    assert ck["meta"]["method"] == "flowe" and math.isfinite(ck["meta"]["epochs"])
    readout_backbone = build_backbone(ck, dilation=(False, True, True), log=lambda *_: None)
    x = torch.rand(1, 3, 64, 96)  # a view in [0, 1]; readouts feed it normalised
    with torch.no_grad():
        a, b = enc(x), readout_backbone(normalize(x))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
