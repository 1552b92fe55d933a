import json
import math

import pytest
import yaml

from benchmarks.cli import main
from benchmarks.suite import load_suite, suite_names
from readout.heads import HEADS


@pytest.fixture(scope="module")
def r18_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "scratch_r18.pth"
    assert main(["checkpoint", "scratch", "--arch", "resnet18", "--out", str(path)]) == 0
    return path


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
    assert record["synthetic"] is True and record["scale"] == "smoke"
    assert math.isfinite(record["metrics"]["mIoU"]) and len(record["per_class_iou"]) == 19
    assert len(record["loss_curve"]) == 3
    resolved = yaml.safe_load((run_dir / "resolved_suite.yaml").read_text())
    assert resolved["scale"] == "smoke" and resolved["protocol"]["iterations"] == 3
    assert (run_dir / "per_class.csv").read_text().startswith("class,IoU")


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
