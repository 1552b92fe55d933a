import pytest
import torch
import torchvision

from core.decoders import SpatialDecoder
from readout.backbone import (CheckpointError, ResNetBackbone, build_backbone,
                              read_checkpoint, save_checkpoint, scratch_checkpoint)
from readout.heads import HEADS, get_head_class
from readout.model import build_segmentation_model
from tests.helpers import authors_poodle_decode, authors_poodle_decoder


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


def _authors_decoder(state: dict, feats: list) -> torch.Tensor:
    """The authors' SDM (tests.helpers: written to their definition) with our weights."""
    width, channels = state["blocks.0.conv1.weight"].shape[:2]
    laterals = tuple(state[f"laterals.{i}.weight"].shape[1] for i in range(2))
    module = authors_poodle_decoder(channels=channels, lateral_channels=laterals,
                                    width=width).eval()
    module.load_state_dict({"decoder_" + k: v for k, v in state.items()}, strict=True)
    return authors_poodle_decode(module, feats)


def _paper_decoder(dec: SpatialDecoder, feats: dict) -> torch.Tensor:
    """PooDLe Eq. 3 as the paper's text reads: z' = g(upsample(z)) + lateral(z_j)."""
    import torch.nn.functional as F
    x = feats["res5"]
    for block, lateral, skip in zip(dec.blocks, dec.laterals, ("res4", "res3")):
        x = F.interpolate(x, size=feats[skip].shape[-2:], mode="bilinear", align_corners=False)
        x = block(x) + lateral(feats[skip])
    return x


def test_the_decoder_computes_the_order_its_checkpoint_entry_names():
    """authors' order for entries that say "authors" (the default), the paper's for "paper"
    and for entries written before the key existed."""
    torch.manual_seed(0)
    trained = SpatialDecoder(channels=64, lateral_channels=(32, 16), reduction=8)
    for bn in [m for m in trained.modules() if isinstance(m, torch.nn.BatchNorm2d)]:
        torch.nn.init.normal_(bn.weight)  # away from identity, so the orders differ more
        bn.running_mean.normal_()
    entry = trained.checkpoint_entry()
    assert entry["order"] == "authors" and entry["kind"] == "sdm"
    feats = {"res5": torch.randn(2, 64, 2, 3), "res4": torch.randn(2, 32, 4, 6),
             "res3": torch.randn(2, 16, 8, 12)}
    def rebuilt(e):
        dec = SpatialDecoder.from_checkpoint_entry(e).eval()
        dec.load_state_dict(e["state_dict"], strict=True)
        return dec
    with torch.no_grad():
        authors = rebuilt(entry)(feats)
        paper = rebuilt({**entry, "order": "paper"})
        old = {k: v for k, v in entry.items() if k != "order"}
        expected = _authors_decoder(entry["state_dict"], [feats["res3"], feats["res4"],
                                                          feats["res5"]])
        assert torch.allclose(authors, expected, atol=1e-5)
        assert torch.allclose(paper(feats), _paper_decoder(paper, feats), atol=1e-5)
        assert torch.equal(rebuilt(old)(feats), paper(feats))
        assert (authors - paper(feats)).norm() / paper(feats).norm() > 0.05
    with pytest.raises(ValueError, match="authors, paper"):
        SpatialDecoder(order="eq3")


def test_deeplab_v3_image_pooling_is_global_at_the_train_crop_and_local_beyond():
    """detectron2's DeepLabV3Head pools over train crop / 16 feature pixels with stride 1:
    the same as global pooling on a train-sized map, local windows on a larger one."""
    from readout.heads import ASPP
    torch.manual_seed(0)
    local = ASPP(8, 4, [1], pool_kernel=(2, 4)).eval()
    wide = ASPP(8, 4, [1]).eval()
    wide.load_state_dict(local.state_dict())
    x = torch.randn(1, 8, 2, 4)
    assert torch.allclose(local(x), wide(x), atol=1e-6)
    x = torch.randn(1, 8, 4, 8)
    assert not torch.allclose(local(x), wide(x), atol=1e-3)
    with pytest.raises(ValueError, match="larger than the 1x2 feature map"):
        local(torch.randn(1, 8, 1, 2))  # detectron2 refuses it; it used to be shrunk


def test_a_deeplab_v3_suite_whose_pool_kernel_exceeds_its_crop_is_refused():
    from benchmarks.suite import SuiteError, resolve_suite
    resolve_suite("cityscapes_deeplabv3", scale="smoke")  # [4, 4] on 64x64 crops: fits
    with pytest.raises(SuiteError, match=r"pool_kernel \[8, 8\] is larger than the 4x4 "
                                         r"feature map of the 64x64 training crop"):
        resolve_suite("cityscapes_deeplabv3", scale="smoke",
                      overrides=["head_options.pool_kernel=[8, 8]"])


def test_pico_fpn_decoder_gives_a_128_d_map_at_stride_4_and_travels_in_the_checkpoint(
        r18, tmp_path):
    from core.decoders import SemanticFPN
    trunk = build_backbone(r18, log=lambda *_: None)
    fpn = SemanticFPN.for_trunk(trunk.output_shape()).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        y = fpn(trunk(x))
    assert y.shape == (2, 128, 16, 24)
    assert fpn.output_shape(trunk.output_shape()).stride == 4
    ck = {**r18, "decoder": fpn.checkpoint_entry()}
    save_checkpoint(ck, tmp_path / "pico.pth")
    back = read_checkpoint(tmp_path / "pico.pth")
    model = build_segmentation_model(back, "deeplab_v1", 5, log=lambda *_: None)
    assert model.head.in_feature == "fpn" and model.decoder_feature == "fpn"
    assert model.backbone.output_shape()["res5"].stride == 32  # FPN reads an undilated trunk
    with torch.no_grad():
        feats = model.features(x)
        assert torch.allclose(feats["fpn"], fpn(trunk(x)), atol=1e-4, rtol=1e-4)  # same weights
    assert model(x)["out"].shape == (2, 5, 64, 96)
    # the readout reads the decoder the checkpoint holds: perturbed weights, another readout
    entry = fpn.checkpoint_entry()
    g = torch.Generator().manual_seed(0)
    perturbed = {**entry, "state_dict": {
        k: v + 0.05 * v.std() * torch.randn(v.shape, generator=g)
        if v.is_floating_point() and v.numel() > 1 else v for k, v in entry["state_dict"].items()}}
    outputs = []
    for decoder in (entry, perturbed):
        torch.manual_seed(3)  # the same head initialisation
        other = build_segmentation_model({**r18, "decoder": decoder}, "deeplab_v1", 5,
                                         log=lambda *_: None).eval()
        with torch.no_grad():
            outputs.append(other(x)["out"])
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-3)
    bad = {**r18, "decoder": {"kind": "aspp", "state_dict": {}}}
    save_checkpoint(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="decoder kind 'aspp' is not one of sdm, fpn"):
        read_checkpoint(tmp_path / "bad.pth")


def test_pico_linear_probe_reads_stride_4_dilated_or_from_the_fpn(r18):
    """PiCO App. A.2.1: a plain backbone is dilated to output stride 4; an FPN checkpoint is
    read at its decoder's stride 4; logits come at 1/4 and are upsampled 4x."""
    from core.decoders import SemanticFPN
    x = torch.randn(1, 3, 64, 96)
    plain = build_segmentation_model(r18, "linear_1x1", 5, log=lambda *_: None)
    assert plain.backbone.output_shape()["res5"].stride == 4
    with torch.no_grad():
        assert plain.head(plain.features(x))["out"].shape == (1, 5, 16, 24)
        assert plain(x)["out"].shape == (1, 5, 64, 96)
    fpn = SemanticFPN.for_trunk(ResNetBackbone(arch="resnet18").output_shape())
    decoded = build_segmentation_model({**r18, "decoder": fpn.checkpoint_entry()},
                                       "linear_1x1", 5, log=lambda *_: None)
    assert decoded.backbone.output_shape()["res5"].stride == 32
    assert decoded.head.in_feature == "fpn"
    with torch.no_grad():
        assert decoded.head(decoded.features(x))["out"].shape == (1, 5, 16, 24)
