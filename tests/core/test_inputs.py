"""The one input convention (core.inputs): pretraining and readouts feed a trunk the same
values for the same image, checkpoints declare it, and a trunk trained on another
convention is converted when read."""
import numpy as np
import pytest
import torch

from core.checkpoint import make_checkpoint
from core.inputs import IMAGENET, UNNORMALISED, InputConvention, convert_state, normalize
from core.io import save_torch
from core.reading import CheckpointError, read_checkpoint
from core.trunk import ResNetBackbone
from pretrain.augment import render_view
from pretrain.models import Encoder
from readout.backbone import build_backbone
from readout.transforms import to_tensor


def _random_bn_statistics(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _first_bn(trunk: ResNetBackbone, x: torch.Tensor) -> torch.Tensor:
    return trunk.bn1(trunk.conv1(x))


def _images(n=2, h=32, w=48, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_pretraining_and_readout_batches_agree_after_the_first_batchnorm():
    """The same images as the pretraining loop feeds them (frames / 255 as StepBatches
    makes them, a view rendered at the identity, the encoder's forward) and as a readout
    feeds them (to_tensor of the uint8 image into the exported trunk): equal first-BN
    activations; without the encoder's normalisation (the convention before the fix) they
    are far apart."""
    torch.manual_seed(0)
    encoder = Encoder(arch="resnet18").eval()
    _random_bn_statistics(encoder)
    images = _images()
    frames = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # StepBatches
    identity = torch.eye(3)
    views = torch.stack([render_view(f, identity, f.shape[-2:]) for f in frames])
    seen = {}
    encoder.body.bn1.register_forward_hook(lambda m, i, o: seen.update(bn1=o.clone()))
    with torch.no_grad():
        encoder(views)
        ck = make_checkpoint(arch="resnet18", state_dict=encoder.backbone_state_dict(),
                             method="m", with_git_sha=False)
        readout = build_backbone(ck, log=lambda *_: None)
        batch = torch.stack([to_tensor(im) for im in images])
        read = _first_bn(readout, batch)
        unnormalised = _first_bn(readout, views)
    assert torch.allclose(seen["bn1"], read, atol=1e-4)
    assert (unnormalised - read).abs().mean() > 10 * (seen["bn1"] - read).abs().mean() + 0.1


def test_every_checkpoint_declares_the_suite_convention():
    ck = make_checkpoint(arch="resnet18", state_dict={}, method="m", with_git_sha=False)
    assert ck["meta"]["input"] == IMAGENET.meta()
    assert InputConvention.from_meta(ck["meta"]["input"], "x").same_as(IMAGENET)
    in_255 = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "range": 255}
    assert InputConvention.from_meta(in_255, "x").same_as(IMAGENET)  # detectron2 units


def _legacy_file(tmp_path, trunk, **meta_changes):
    ck = make_checkpoint(arch="resnet18", state_dict=trunk.state_dict(), method="flowe",
                         config={"schedule": {"steps": 10}}, with_git_sha=False)
    del ck["meta"]["input"]  # written before checkpoints declared their input
    ck["meta"].update(meta_changes)
    path = tmp_path / "legacy.pth"
    save_torch(ck, path)
    return path


@pytest.mark.parametrize("source", ["legacy", "bgr_255"])
def test_a_trunk_of_another_convention_is_converted_when_read(tmp_path, source):
    """Folded into conv1 / bn1: away from conv1's 3-pixel zero padding, the converted
    trunk on suite inputs equals the original trunk on the inputs it was trained on."""
    torch.manual_seed(1)
    trunk = ResNetBackbone(arch="resnet18").eval()
    _random_bn_statistics(trunk)
    if source == "legacy":
        path, convention = _legacy_file(tmp_path, trunk), UNNORMALISED
    else:
        convention = InputConvention(mean=(103.53, 116.28, 123.675), std=(1.0, 1.0, 1.0),
                                     range=255, channels="BGR")
        path = _legacy_file(tmp_path, trunk, input=convention.meta())
    said = []
    ck = read_checkpoint(path, log=said.append)
    assert len(said) == 1 and "converted" in said[0] and str(path) in said[0]
    assert ck["meta"]["input_converted_from"] == convention.meta()
    assert ck["meta"]["input"] == IMAGENET.meta()
    converted = build_backbone(ck, log=lambda *_: None)
    x01 = torch.from_numpy(_images(h=40, w=40)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        original = _first_bn(trunk, normalize(x01, convention))
        ours = _first_bn(converted, normalize(x01))
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert torch.allclose(original[inner], ours[inner], atol=1e-3)
    assert not torch.allclose(_first_bn(trunk, normalize(x01))[inner], ours[inner], atol=1e-2)


def test_a_suite_convention_checkpoint_is_read_unchanged(tmp_path):
    trunk = ResNetBackbone(arch="resnet18")
    ck = make_checkpoint(arch="resnet18", state_dict=trunk.state_dict(), method="flowe",
                         config={"schedule": {"steps": 10}}, with_git_sha=False)
    save_torch(ck, tmp_path / "new.pth")
    said = []
    back = read_checkpoint(tmp_path / "new.pth", log=said.append)
    assert said == [] and "input_converted_from" not in back["meta"]
    assert torch.equal(back["state_dict"]["conv1.weight"], trunk.state_dict()["conv1.weight"])


@pytest.mark.parametrize("bad", [{"mean": [0.5, 0.5], "std": [1, 1, 1]},
                                 {"mean": [0, 0, 0], "std": [0, 1, 1]},
                                 {"mean": [0, 0, 0], "std": [1, 1, 1], "channels": "YUV"},
                                 "imagenet"])
def test_a_bad_input_declaration_is_refused_in_one_line(tmp_path, bad):
    path = _legacy_file(tmp_path, ResNetBackbone(arch="resnet18"), input=bad)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert str(path) in str(e.value) and "meta.input" in str(e.value)
    assert "\n" not in str(e.value)


def test_convert_state_round_trips():
    trunk = ResNetBackbone(arch="resnet18")
    state = trunk.state_dict()
    there = convert_state(state, UNNORMALISED, IMAGENET)
    back = convert_state(there, IMAGENET, UNNORMALISED)
    for key in ("conv1.weight", "bn1.running_mean"):
        assert torch.allclose(back[key], state[key], atol=1e-5)
        assert not torch.allclose(there[key], state[key], atol=1e-3)
