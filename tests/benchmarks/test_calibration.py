import json
import math

import numpy as np
import pytest

from benchmarks.calibration import ColourOnly, calibration, fit_colour_only, sample_pixels
from benchmarks.runner import world_version
from benchmarks.tracking import experiment_name, record_world


class _Toy:
    """Two classes that differ only by colour (red road, blue sky) and one ignored pixel."""
    root = "toy"

    def __len__(self):
        return 3

    def __getitem__(self, i):
        image = np.zeros((4, 6, 3), np.uint8)
        label = np.zeros((4, 6), np.uint8)
        image[:2, :, 2] = 200 + 10 * i
        image[2:, :, 0] = 180 + 10 * i
        label[:2] = 10
        label[2:] = 0
        label[0, 0] = 255
        return {"image": image, "label": label}


def test_the_colour_only_floor_separates_what_colour_separates():
    x, y = sample_pixels(_Toy(), pixels=60, seed=0)
    assert x.shape == (60, 3) and set(y.tolist()) == {0, 10}  # the ignored pixel never drawn
    model = fit_colour_only(x, y, 19)
    assert isinstance(model, ColourOnly)
    from readout.transforms import to_tensor
    item = _Toy()[1]
    pred = model(to_tensor(item["image"])[None])["out"][0].argmax(0)
    valid = item["label"] != 255
    assert (pred.numpy()[valid] == item["label"][valid]).all()


def _row(method, suite, miou, std):
    return {"method": method, "suite": suite, "mIoU": miou, "mIoU_std": std}


def test_calibration_targets_are_judged_on_the_numbers():
    board = [_row("scratch", "s", 9.0, 0.5), _row("supervised", "s", 30.0, 1.0),
             _row("colour_only", "s", 5.0, 0.1),
             _row("scratch", "t", 9.0, 2.0), _row("supervised", "t", 15.0, 1.0),
             _row("colour_only", "t", 8.0, math.nan)]
    got = {(c["suite"], c["target"]): c for c in calibration(board, ["s", "t"])}
    assert got["s", "scratch_over_supervised"]["met"]  # 0.30 in [0.2, 0.4]
    assert got["s", "scratch_over_supervised"]["value"] == pytest.approx(0.3)
    assert got["s", "colour_only_below_scratch"]["met"]  # 4.0 below > 2 x 0.36, 0.56 of it
    assert not got["t", "scratch_over_supervised"]["met"]  # 0.60
    assert not got["t", "colour_only_below_scratch"]["met"]  # 1.0 below < 2 x 1.41
    assert "0.60" in got["t", "scratch_over_supervised"]["text"]
    near = [_row("scratch", "u", 10.0, 0.1), _row("colour_only", "u", 9.0, 0.1)]
    (close,) = calibration(near, ["u"])  # 10 std below, but 90 % of Scratch: not well below
    assert not close["met"] and close["share"] == pytest.approx(0.9)


def test_every_world_has_its_own_experiment_and_records_name_theirs(tmp_path):
    assert experiment_name("s", False) == "s"
    assert experiment_name("s", True, 1) == "s [synthetic]"  # world 1's name from before
    assert experiment_name("s", True, 2) == "s [synthetic world 2]"
    assert record_world({"synthetic": False, "world": None}) is None
    assert record_world({"synthetic": True}) == 1  # written before versions existed
    assert record_world({"synthetic": True, "world": 2}) == 2
    (tmp_path / "old" / "cityscapes").mkdir(parents=True)
    (tmp_path / "old" / "synth_manifest.json").write_text(json.dumps({"synthetic": True}))
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "synth_manifest.json").write_text(json.dumps({"world_version": 2}))
    assert world_version(tmp_path / "old" / "cityscapes") == 1
    assert world_version(tmp_path / "new") == 2
    assert world_version(tmp_path) is None
