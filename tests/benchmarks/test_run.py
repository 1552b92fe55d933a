import json
import math

import pytest
import yaml

from benchmarks.cli import main
from benchmarks.suite import load_suite, suite_names
from readout.detection import DETECTORS
from readout.heads import HEADS
from tests.helpers import lighter_detector


@pytest.fixture
def r18_path(r18):
    return r18


def _suite_for(head):
    return next(n for n in suite_names()
                if n.startswith("cityscapes") and load_suite(n)["head"] == head)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_run_smoke_writes_the_record(head, tiny_root, r18_path, tmp_path, capsys):
    suite = _suite_for(head)
    assert main(["run", "--suite", suite, "--checkpoint", str(r18_path), "--data-root",
                 str(tiny_root), "--scale", "smoke", "--device", "cpu",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "mIoU" in out
    (run_dir,) = list(tmp_path.glob(f"{suite}/*/seed0"))
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["synthetic"] is True and record["scale"] == "smoke" and record["world"] == 2
    assert math.isfinite(record["metrics"]["mIoU"]) and len(record["per_class"]) == 19
    absent = [c for c, v in record["per_class"].items() if math.isnan(v)]
    assert absent and all(f"{c} absent" in out for c in absent)  # printed, never as 0
    from PIL import Image
    with Image.open(sorted((run_dir / "qualitative").glob("*.png"))[0]) as im:
        assert im.size[0] >= 1200  # three panels of 6 inches at 100 dpi, with a legend
    assert len(record["loss_curve"]) == 3
    resolved = yaml.safe_load((run_dir / "resolved_suite.yaml").read_text())
    assert resolved["scale"] == "smoke" and resolved["protocol"]["iterations"] == 3
    assert (run_dir / "per_class.csv").read_text().startswith("class,IoU")


@pytest.mark.parametrize("head", sorted(DETECTORS))
def test_detection_smoke_run_gives_finite_coco_metrics(head, tiny_root, r18_path, tmp_path,
                                                       capsys, monkeypatch):
    import readout.detection
    build = readout.detection.build_detection_model
    monkeypatch.setattr(readout.detection, "build_detection_model",
                        lambda *a, **k: lighter_detector(build(*a, **k)))
    (suite,) = [n for n in suite_names() if load_suite(n)["head"] == head]
    assert main(["run", "--suite", suite, "--checkpoint", str(r18_path), "--data-root",
                 str(tiny_root), "--scale", "smoke", "--device", "cpu",
                 "--out", str(tmp_path)]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    (run_dir,) = list(tmp_path.glob(f"{suite}/*/seed0"))
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["task"] == "object_detection" and record["synthetic"] is True
    for key in ("mAP", "AP50", "AP75", "APs", "APm"):  # tiny images hold no large boxes
        assert 0 <= record["metrics"][key] <= 100, key
    assert record["per_class_metric"] == "AP" and len(record["per_class"]) == 10
    # 1 epoch over the training images that have boxes, batch 2
    assert len(record["loss_curve"]) == record["schedule"]["iterations"] == round(
        record["train_images_with_boxes"] / 2)
    assert (run_dir / "per_class.csv").read_text().startswith("class,AP")


def test_bad_detection_labels_fail_naming_the_file(tiny_root, r18_path, tmp_path, capsys):
    import shutil
    root = tmp_path / "world"
    shutil.copytree(tiny_root, root)
    (root / "bdd100k" / "labels" / "det_20" / "det_train.json").write_text("[{\"name\": 3}]")
    assert main(["run", "--suite", "bdd_det_c4", "--checkpoint", str(r18_path), "--data-root",
                 str(root), "--scale", "smoke", "--device", "cpu", "--out",
                 str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "det_train.json" in err and "frame 0" in err


def test_bdd_groups_come_from_the_published_table(tiny_root, r18_path, tmp_path):
    assert main(["run", "--suite", "bdd_linear", "--checkpoint", str(r18_path), "--data-root",
                 str(tiny_root), "--scale", "smoke", "--device", "cpu", "--out", str(tmp_path),
                 "protocol.iterations=1"]) == 0
    (run_dir,) = list(tmp_path.glob("bdd_linear/*/seed0"))
    record = json.loads((run_dir / "metrics.json").read_text())
    assert set(record["class_groups"]["rare"]) == {"bus", "wall", "train", "bicycle",
                                                   "motorcycle", "rider"}
    assert "pole" in record["class_groups"]["small"]


def test_run_errors(r18_path, tmp_path, capsys):
    assert main(["run", "--suite", "nope", "--checkpoint", str(r18_path)]) == 2
    assert "cityscapes_linear" in capsys.readouterr().err
    assert main(["run", "--suite", "bdd_linear", "--checkpoint", str(r18_path),
                 "--data-root", str(tmp_path), "protocol.bogus=1"]) == 2
    assert "protocol.iterations" in capsys.readouterr().err
    assert main(["run", "--suite", "bdd_linear", "--checkpoint", str(tmp_path / "none.pth"),
                 "--data-root", str(tmp_path)]) == 2
    assert "none.pth" in capsys.readouterr().err


def test_list_and_info(r18_path, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in suite_names())
    assert main(["checkpoint", "info", str(r18_path)]) == 0
    assert "resnet18" in capsys.readouterr().out


def test_an_untrainable_protocol_is_refused_before_any_work(r18_path, tiny_root, tmp_path,
                                                             capsys):
    """protocol.iterations=0 once wrote a "finished" record with an untrained head."""
    assert main(["run", "--suite", "cityscapes_linear", "--checkpoint", str(r18_path),
                 "--data-root", str(tiny_root), "--scale", "smoke", "--device", "cpu",
                 "--out", str(tmp_path / "runs"), "protocol.iterations=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("protocol.iterations: must be >= 1, got 0")
    assert len(err.splitlines()) == 1 and not (tmp_path / "runs").exists()
