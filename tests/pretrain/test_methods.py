import pytest
import torch

from pretrain.data.pairs import FramePairs
from pretrain.data.video import VideoSource
from pretrain.config import load_preset
from pretrain.flow import get_estimator
from pretrain.methods import METHODS, get_method_class
from pretrain.train import PretrainSchedule, pretrain


def _method(name, seed=0):
    torch.manual_seed(seed)
    return get_method_class(name)(**load_preset(name, "smoke")["model"])


def _pairs(tiny_root):
    return FramePairs(VideoSource(tiny_root / "bdd100k" / "videos"), dt_frames=(1, 3), repeats=2)


SCHEDULE = PretrainSchedule(steps=3, batch_size=2, optimizer="lars", lr=0.1, weight_decay=1e-6,
                            checkpoint_every=1, seed=4)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_two_steps_train_online_and_move_target_by_ema(name, tiny_root, tmp_path):
    method = _method(name)
    # parameters only: BatchNorm running statistics change in any forward pass, so a check
    # that included them would pass with an optimizer that never updates a weight
    online0 = {k: p.detach().clone() for k, p in method.encoder.named_parameters()}
    target0 = [p.clone() for p in method.target_encoder.parameters()]
    curve = pretrain(method, _pairs(tiny_root), SCHEDULE, out_dir=tmp_path, stop_after=1,
                     estimator=get_estimator("gt"), progress=False, log=lambda *_: None)
    assert len(curve) == 1 and torch.isfinite(torch.tensor(curve[0]["loss"]))
    moved = [k for k, p in method.encoder.named_parameters() if not torch.equal(p, online0[k])]
    assert len(moved) >= 0.9 * len(online0)  # the online network learns
    tau = curve[0]["tau"]
    assert tau == pytest.approx(0.996)
    for t, t0, o in zip(method.target_encoder.parameters(), target0,
                        method.encoder.parameters()):
        assert torch.allclose(t, tau * t0 + (1 - tau) * o, rtol=1e-6, atol=1e-7)
    curve = pretrain(method, _pairs(tiny_root), SCHEDULE, out_dir=tmp_path, stop_after=2,
                     estimator=get_estimator("gt"), progress=False, log=lambda *_: None)
    assert [c["step"] for c in curve] == [1, 2] and all(
        torch.isfinite(torch.tensor(c["loss"])) for c in curve)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_resume_after_a_kill_is_bit_identical(name, tiny_root, tmp_path):
    est = get_estimator("gt")
    full = _method(name)
    pretrain(full, _pairs(tiny_root), SCHEDULE, out_dir=tmp_path / "full", estimator=est,
             progress=False, log=lambda *_: None)
    killed = _method(name)
    pretrain(killed, _pairs(tiny_root), SCHEDULE, out_dir=tmp_path / "killed", stop_after=1,
             estimator=est, progress=False, log=lambda *_: None)
    resumed = _method(name, seed=9)  # a fresh process, initialised differently
    pretrain(resumed, _pairs(tiny_root), SCHEDULE, out_dir=tmp_path / "killed", estimator=est,
             progress=False, log=lambda *_: None)
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    from readout.backbone import read_checkpoint
    ck = read_checkpoint(tmp_path / "killed" / "backbone.pth")
    assert ck["meta"]["method"] == name and ck["meta"]["iterations"] == 3
    assert torch.equal(ck["state_dict"]["conv1.weight"], resumed.encoder.state_dict()[
        "body.conv1.weight"])


def test_flowe_needs_flow(tiny_root, tmp_path):
    with pytest.raises(ValueError, match="needs flow"):
        pretrain(_method("flowe"), _pairs(tiny_root), SCHEDULE, out_dir=tmp_path,
                 progress=False, log=lambda *_: None)
    with pytest.raises(KeyError, match="byol_video"):
        get_method_class("simclr")
