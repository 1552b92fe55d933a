import pytest
import torch
import torchvision

from core.decoders import SpatialDecoder
from readout.backbone import (CheckpointError, ResNetBackbone, build_backbone,
                              read_checkpoint, save_checkpoint, scratch_checkpoint)
from readout.heads import HEADS, get_head_class
from readout.model import build_segmentation_model


@pytest.fixture(scope="module")
def r18():
    return scratch_checkpoint("resnet18", seed=0)


@pytest.mark.parametrize("dilation,multigrid,strides", [
    ((False, False, False), None, (4, 8, 16, 32)),
    ((False, True, True), None, (4, 8, 8, 8)),
    ((False, False, True), (1, 2), (4, 8, 16, 16)),
])
def test_backbone_reports_its_real_output_shapes(dilation, multigrid, strides):
    bb = ResNetBackbone(arch="resnet18", dilation=dilation, multigrid=multigrid).eval()
    feats = bb(torch.zeros(1, 3, 64, 96))
    for (name, spec), stride in zip(bb.output_shape().items(), strides):
        assert spec.stride == stride
        assert feats[name].shape[1:] == (spec.channels, 64 // stride, 96 // stride)


def test_multigrid_rates_on_res5():
    bb = ResNetBackbone(arch="resnet50", dilation=(False, False, True), multigrid=(1, 2, 4))
    rates = [blk.conv2.dilation[0] for blk in bb.layer4]
    assert rates == [2, 4, 8]


@pytest.mark.parametrize("head", sorted(HEADS))
def test_head_forward_at_input_resolution(head, r18):
    model = build_segmentation_model(r18, head, num_classes=5, log=lambda *_: None)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out["out"].shape == (2, 5, 64, 64)
    assert ("aux" in out) == (get_head_class(head).aux_weight > 0)
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert not model.backbone.training  # frozen BN stays in eval mode
    assert any(p.requires_grad for p in model.head.parameters())


def test_torchvision_state_dict_imports_and_drops_the_classifier(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "tv.pth")
    ck = read_checkpoint(tmp_path / "tv.pth")
    assert ck["arch"] == "resnet18"
    logs = []
    build_backbone(ck, log=logs.append)
    assert "fc.weight" in logs[0]


def test_missing_and_unexpected_keys_are_listed(r18, tmp_path):
    bad = dict(r18, state_dict=dict(r18["state_dict"]))
    del bad["state_dict"]["layer1.0.conv1.weight"]
    bad["state_dict"]["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        build_backbone(bad)
    assert "layer1.0.conv1.weight" in str(e.value) and "extra.weight" in str(e.value)
    torch.save({"format": "something/9"}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="neither"):
        read_checkpoint(tmp_path / "x.pth")


def test_checkpoint_round_trip_is_weights_only(r18, tmp_path):
    save_checkpoint(r18, tmp_path / "s.pth")
    back = read_checkpoint(tmp_path / "s.pth")
    assert back["meta"]["method"] == "scratch"
    assert all(torch.equal(back["state_dict"][k], v) for k, v in r18["state_dict"].items())


def test_poodle_decoder_is_kept_for_the_linear_readout():
    ck = scratch_checkpoint("resnet50", seed=0)
    dec = SpatialDecoder()
    ck["decoder"] = {"kind": "sdm", "state_dict": dec.state_dict()}
    model = build_segmentation_model(ck, "deeplab_v1", 4, log=lambda *_: None)
    assert model.decoder is not None and model.head.in_feature == "sdm"
    assert model.backbone.output_shape()["res5"].stride == 32  # trunk undilated
    out = model(torch.randn(1, 3, 64, 64))
    assert out["out"].shape == (1, 4, 64, 64)
    upernet = build_segmentation_model(ck, "upernet", 4, log=lambda *_: None)
    assert upernet.decoder is None  # discarded for UperNet (PooDLe Sec. 4.1)


def test_decoder_adds_the_lateral_after_the_block():
    """PooDLe Eq. 3: z' = g(upsample(z)) + lateral(z_j)."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    dec = SpatialDecoder(channels=64, lateral_channels=(32, 16), reduction=8).eval()
    feats = {"res5": torch.randn(1, 64, 2, 3), "res4": torch.randn(1, 32, 4, 6),
             "res3": torch.randn(1, 16, 8, 12)}
    with torch.no_grad():
        for lat in dec.laterals:
            lat.weight.zero_()
            lat.bias.fill_(0.5)
        out = dec(feats)
        x = feats["res5"]
        for block, skip in zip(dec.blocks, ("res4", "res3")):
            x = F.interpolate(x, size=feats[skip].shape[-2:], mode="bilinear",
                              align_corners=False)
            x = block(x) + 0.5
    assert torch.allclose(out, x)
