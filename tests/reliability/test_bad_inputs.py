"""Every user error exits 2 with one line that names the file or key (no traceback, no
hint to unpickle code), and leaves no half-written file behind."""
import errno
import pickle
import shutil

import numpy as np
import pytest
import torch

from benchmarks.cli import main
from benchmarks.convert import export_detectron2
from readout.backbone import read_checkpoint
from tests.helpers import smoke_run


class Opaque:  # an object a checkpoint may not carry (torch's weights_only refuses it)
    pass


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in err and "weights_only=False" not in err
    return err


@pytest.fixture(scope="module")
def bad_checkpoints(r18, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_checkpoints")
    data = r18.read_bytes()
    (folder / "truncated.pth").write_bytes(data[: len(data) // 2])
    (folder / "text.pth").write_text("these are not weights\n")
    good = read_checkpoint(r18)
    wrong = {**good, "state_dict": {**good["state_dict"],
                                    "layer1.0.conv1.weight": torch.zeros(3, 3)}}
    torch.save(wrong, folder / "wrong_shape.pth")
    torch.save({**good, "meta": {"note": Opaque()}}, folder / "objects.pth")
    torch.save({k: v for k, v in good["state_dict"].items() if k != "fc.weight"
                and not k.startswith("layer4.1")}, folder / "torchvision_missing.pth")
    return folder


@pytest.mark.parametrize("name, says", [
    ("truncated.pth", "cannot be read: not a complete PyTorch file"),
    ("text.pth", "cannot be read: not a complete PyTorch file"),
    ("wrong_shape.pth", "layer1.0.conv1.weight is (3, 3), expected (64, 64, 3, 3)"),
    ("objects.pth", "holds Python objects besides tensors"),
    ("torchvision_missing.pth", "missing keys (layer4.1."),
])
def test_bad_checkpoints_fail_in_one_line_everywhere(bad_checkpoints, name, says, tiny_root,
                                                     tmp_path, capsys):
    path = bad_checkpoints / name
    for argv in (["checkpoint", "info", str(path)],
                 ["checkpoint", "import", "--from", "mmseg", str(path), str(tmp_path / "o")],
                 ["run", "--suite", "cityscapes_linear", "--checkpoint", str(path),
                  "--data-root", str(tiny_root), "--scale", "smoke", "--device", "cpu",
                  "--out", str(tmp_path / "runs")]):
        err = _one_line_error(capsys, argv)
        assert str(path) in err
        if argv[0] == "checkpoint" and argv[1] == "info" or argv[0] == "run":
            assert says in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "o").exists()


def test_a_detectron2_pickle_with_object_arrays_is_refused(r18, tmp_path, capsys):
    obj = export_detectron2(read_checkpoint(r18), tmp_path / "d2.pkl", log=lambda *_: None)
    obj["model"]["stem.conv1.weight"] = np.array([1, "a"], dtype=object)
    (tmp_path / "objects.pkl").write_bytes(pickle.dumps(obj))
    err = _one_line_error(capsys, ["checkpoint", "import", "--from", "detectron2",
                                   str(tmp_path / "objects.pkl"), str(tmp_path / "x.pth")])
    assert "not numeric arrays (first: stem.conv1.weight, a array of object)" in err


@pytest.mark.parametrize("code, says", [(errno.ENOSPC, "the disk is full"),
                                        (errno.EROFS, "read-only"),
                                        (errno.EACCES, "choose a folder you may write")])
def test_a_full_disk_or_a_read_only_folder_is_one_line_and_leaves_no_temporary_file(
        code, says, tmp_path, capsys, monkeypatch):
    def full(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"partial")
        raise OSError(code, "simulated", str(f))
    monkeypatch.setattr(torch, "save", full)
    err = _one_line_error(capsys, ["checkpoint", "scratch", "--arch", "resnet18", "--out",
                                   str(tmp_path / "ck.pth")])
    assert says in err and "ck.pth" in err
    assert list(tmp_path.iterdir()) == []


def test_malformed_overrides_and_devices_are_one_line(tiny_root, r18, tmp_path, capsys):
    base = ["run", "--suite", "cityscapes_linear", "--checkpoint", str(r18), "--data-root",
            str(tiny_root), "--scale", "smoke", "--out", str(tmp_path / "runs")]
    err = _one_line_error(capsys, base + ["--device", "cpu", "protocol.crop=[64, 64"])
    assert "override 'protocol.crop=[64, 64': '[64, 64' is not valid YAML" in err
    if not torch.cuda.is_available():
        err = _one_line_error(capsys, base + ["--device", "cuda"])
        assert "--device cuda: no CUDA GPU is visible here; use --device cpu" in err
    err = _one_line_error(capsys, base + ["--device", "tpu"])
    assert "--device tpu: use cpu, cuda or cuda:N" in err
    err = _one_line_error(capsys, ["pretrain", "--method", "byol", "--preset", "smoke",
                                   "--videos", str(tiny_root / "bdd100k" / "videos"),
                                   "--out", str(tmp_path / "p"), "model.view_size=[8,"])
    assert "override 'model.view_size=[8,'" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "p").exists()


@pytest.fixture
def world_copy(tiny_root, tmp_path):
    root = tmp_path / "world"
    shutil.copytree(tiny_root / "cityscapes", root / "cityscapes")
    shutil.copy(tiny_root / "synth_manifest.json", root / "synth_manifest.json")
    return root


def test_bad_pairs_stop_a_run_before_training_or_are_skipped_and_counted(
        world_copy, r18, tmp_path, capsys):
    import cv2
    labels = sorted((world_copy / "cityscapes" / "gtFine" / "train").rglob("*_labelIds.png"))
    cv2.imwrite(str(labels[0]), np.zeros((5, 7), np.uint8))  # another size than its image
    images = sorted((world_copy / "cityscapes" / "leftImg8bit" / "train").rglob("*.png"))
    images[-1].write_text("not an image")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    runs = tmp_path / "runs"
    assert smoke_run(r18, world_copy, runs, uri, "protocol.iterations=1") == 2
    err = capsys.readouterr().err.strip()
    assert "cityscapes train: 2 problem(s)" in err and "--skip-bad" in err
    assert len(err.splitlines()) == 1 and not list(runs.rglob("metrics.json"))
    assert smoke_run(r18, world_copy, runs, uri, "protocol.iterations=1", "--skip-bad") == 0
    (record,) = [__import__("json").loads(p.read_text()) for p in runs.rglob("metrics.json")]
    kinds = sorted(p.split("]")[0][1:] for p in record["skipped_pairs"]["train"])
    assert kinds == ["size_mismatch", "unreadable"]


def test_a_corrupt_label_met_during_a_run_is_one_line_naming_it(world_copy, r18, tmp_path,
                                                                capsys):
    labels = sorted((world_copy / "cityscapes" / "gtFine" / "val").rglob("*_labelIds.png"))
    data = labels[0].read_bytes()
    labels[0].write_bytes(data[: len(data) - 20])  # headers intact, pixels cut short
    err_code = smoke_run(r18, world_copy, tmp_path / "runs",
                         f"sqlite:///{tmp_path / 'mlflow.db'}", "protocol.iterations=1")
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert err_code == 2 and err.startswith("error: ")
    assert f"cannot decode label {labels[0]}" in err and "bench data check" in err
    assert main(["data", "check", "--dataset", "cityscapes", "--root",
                 str(world_copy / "cityscapes"), "--splits", "val"]) == 1
    assert f"[corrupt] {labels[0]} does not decode" in capsys.readouterr().out
