import os
import pickle

import pytest
import torch
import torchvision

from benchmarks.cli import main
from benchmarks.convert import (export_detectron2, export_mmseg, import_detectron2,
                                import_mmseg, import_torchvision)
from readout.backbone import CheckpointError, scratch_checkpoint


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def ckpt():
    return scratch_checkpoint("resnet18", seed=3)


def test_detectron2_round_trip_is_exact(ckpt, tmp_path):
    lines = []
    obj = export_detectron2(ckpt, tmp_path / "d2.pkl", log=lines.append)
    names = set(obj["model"])
    assert {"stem.conv1.weight", "stem.conv1.norm.running_var", "res2.0.conv1.norm.weight",
            "res3.0.shortcut.weight", "res5.1.conv2.norm.bias"} <= names
    assert not any(k.startswith(("layer", "bn1", "fc")) for k in names)
    assert any("layer1.0.bn1.weight" in line and "res2.0.conv1.norm.weight" in line
               for line in lines)
    back = import_detectron2(tmp_path / "d2.pkl", log=lambda *_: None)
    assert back["arch"] == "resnet18"
    _same(ckpt["state_dict"], back["state_dict"])


def test_mmseg_round_trip_is_exact(ckpt, tmp_path):
    obj = export_mmseg(ckpt, tmp_path / "mm.pth", log=lambda *_: None)
    assert all(k.startswith("backbone.") for k in obj["state_dict"])
    _same(ckpt["state_dict"], import_mmseg(tmp_path / "mm.pth", log=lambda *_: None)["state_dict"])


def test_torchvision_import_drops_only_the_classifier(tmp_path):
    net = torchvision.models.resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    lines = []
    ck = import_torchvision(tmp_path / "tv.pth", log=lines.append)
    expected = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    _same(expected, ck["state_dict"])
    assert any("fc.weight" in line and "dropped" in line for line in lines)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_is_not_plain_data_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"model": {"x": _Evil()}}))
    with pytest.raises(CheckpointError, match="refusing to unpickle .*system"):
        import_detectron2(tmp_path / "evil.pkl", log=lambda *_: None)
    assert not (tmp_path / "pwned").exists()


def test_unmapped_and_unexpected_keys_fail(ckpt, tmp_path):
    obj = export_detectron2(ckpt, tmp_path / "d2.pkl", log=lambda *_: None)
    extra = {**obj["model"], "roi_heads.box_predictor.cls_score.weight": obj["model"][
        "stem.conv1.weight"]}
    (tmp_path / "heads.pkl").write_bytes(pickle.dumps({"model": extra}))
    with pytest.raises(CheckpointError, match="cannot be mapped: roi_heads"):
        import_detectron2(tmp_path / "heads.pkl", log=lambda *_: None)
    missing = {k: v for k, v in obj["model"].items() if k != "res4.1.conv2.weight"}
    (tmp_path / "missing.pkl").write_bytes(pickle.dumps({"model": missing}))
    with pytest.raises(CheckpointError, match="1 missing keys \\(layer3.1.conv2.weight\\)"):
        import_detectron2(tmp_path / "missing.pkl", log=lambda *_: None)


def test_bench_checkpoint_export_and_import(tmp_path, capsys):
    src = tmp_path / "r18.pth"
    assert main(["checkpoint", "scratch", "--arch", "resnet18", "--out", str(src)]) == 0
    assert main(["checkpoint", "export", "--to", "detectron2", str(src),
                 str(tmp_path / "r18.pkl")]) == 0
    out = capsys.readouterr().out
    assert "-> res2.0.conv1.weight" in out and "STRIDE_IN_1X1 False" in out
    assert main(["checkpoint", "import", "--from", "detectron2", str(tmp_path / "r18.pkl"),
                 str(tmp_path / "back.pth")]) == 0
    assert main(["checkpoint", "info", str(tmp_path / "back.pth")]) == 0
    assert "imported:detectron2" in capsys.readouterr().out
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    assert main(["checkpoint", "import", "--from", "detectron2", str(tmp_path / "junk.pkl"),
                 str(tmp_path / "x.pth")]) == 2
    assert "junk.pkl" in capsys.readouterr().err
