import json

import pytest
import torch

from benchmarks.supervised import supervised_config, train_supervised
from readout.backbone import read_checkpoint, scratch_checkpoint
from readout.detection import DETECTORS, build_detection_model
from readout.heads import HEADS, RETRIEVAL_HEADS
from readout.model import build_segmentation_model

PROTOCOL = dict(iterations=3, batch_size=2, lr=0.01, momentum=0.9, weight_decay=1e-4,
                poly_power=0.9, crop=[48, 48], resize={"short_side": [64, 72]}, flip=True)


@pytest.fixture(scope="module")
def supervised(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("supervised")
    config = supervised_config(arch="resnet18", datasets=["cityscapes", "bdd100k"],
                               head="deeplab_v1", protocol=PROTOCOL)
    path = train_supervised(config, data_root=tiny_root, out_dir=out, seed=0, progress=False,
                            log=lambda *_: None)
    return path


def test_supervised_trains_the_backbone_and_exports_it(supervised):
    ck = read_checkpoint(supervised)
    assert ck["meta"]["method"] == "supervised" and ck["meta"]["iterations"] == 3
    init = scratch_checkpoint("resnet18", 0)["state_dict"]
    conv = [k for k in init if k.endswith("conv1.weight")]
    assert any(not torch.equal(init[k], ck["state_dict"][k]) for k in conv)  # weights moved
    curve = json.loads((supervised.parent / "curve.json").read_text())
    assert len(curve) == 3
    assert not (supervised.parent / "readout_checkpoint.pth").exists()
    again = train_supervised(supervised_config(arch="resnet18", datasets=["cityscapes",
                                                                          "bdd100k"],
                                               head="deeplab_v1", protocol=PROTOCOL),
                             data_root=None, out_dir=supervised.parent, seed=0)
    assert again == supervised  # finished: kept, nothing retrained


@pytest.mark.parametrize("head", sorted(HEADS) + sorted(RETRIEVAL_HEADS))
def test_supervised_checkpoint_loads_in_every_segmentation_readout(head, supervised):
    model = build_segmentation_model(read_checkpoint(supervised), head, 19,
                                     log=lambda *_: None)
    with torch.no_grad():
        if head in HEADS:
            assert model(torch.zeros(1, 3, 64, 64))["out"].shape == (1, 19, 64, 64)


@pytest.mark.parametrize("head", sorted(DETECTORS))
def test_supervised_checkpoint_loads_in_every_detection_readout(head, supervised):
    model = build_detection_model(read_checkpoint(supervised), head, 10, log=lambda *_: None)
    model.eval()
    with torch.no_grad():
        (det,) = model([torch.zeros(3, 64, 96)])
    assert set(det) >= {"boxes", "labels", "scores"}


def test_supervised_config_is_strict():
    with pytest.raises(ValueError, match="unknown keys \\['epochs'\\]"):
        supervised_config(arch="resnet18", datasets=["cityscapes"], head="deeplab_v1",
                          protocol={**PROTOCOL, "epochs": 3})
