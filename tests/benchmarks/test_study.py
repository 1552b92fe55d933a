import copy
import math

import pytest

from benchmarks.study import (Study, StudyError, check_expectations, leaderboard_rows,
                              load_study, source_fingerprint, study_names, validate_study)
from pretrain.config import apply_overrides, load_preset, resolve
from pretrain.methods import METHODS, get_method_class
from tests.helpers import data_overrides


@pytest.mark.parametrize("name", study_names())
def test_every_study_preset_is_valid(name):
    spec = load_study(name)
    assert set(spec["methods"]) >= set(METHODS) | {"scratch", "supervised"}
    assert spec["seeds"] >= 1 and spec["readouts"]


def test_unknown_keys_and_methods_fail():
    spec = load_study("tiny")
    with pytest.raises(StudyError, match="unknown key.*colour"):
        validate_study({**copy.deepcopy(spec), "colour": 1}, "x")
    with pytest.raises(StudyError, match="unknown \\['simclr'\\]"):
        validate_study({**copy.deepcopy(spec), "methods": ["simclr"]}, "x")
    with pytest.raises(StudyError, match="not in study"):
        Study(spec, "/nonexistent", methods=["dino"])


def _table(values: dict) -> list[dict]:
    return [{"method": m, "seed": s, "suite": "cityscapes_linear", "scale": "study_cpu",
             "metrics": {"mIoU": v, "mIoU_small": v / 10}}
            for m, vs in values.items() for s, v in enumerate(vs)]


def test_leaderboard_is_mean_and_sample_std_over_seeds():
    (row,) = leaderboard_rows(_table({"flowe": [10.0, 12.0, 14.0]}), ["flowe"])
    assert (row["mIoU"], row["mIoU_std"], row["seeds"]) == (12.0, 2.0, 3)
    assert math.isnan(row["Acc"])


def test_expectations_are_judged_on_the_numbers():
    board = leaderboard_rows(_table({"scratch": [10, 11, 12], "supervised": [30, 31, 32],
                                     "byol": [11, 12, 13], "flowe": [20, 21, 22]}),
                             ["scratch", "supervised", "byol", "flowe"])
    checks = check_expectations([
        {"kind": "beats", "methods": ["ssl"], "than": "scratch", "metric": "mIoU",
         "suites": ["cityscapes_linear"], "by_std": 2, "source": "s"},
        {"kind": "best", "method": "supervised", "metric": "mIoU",
         "suites": ["cityscapes_linear"], "source": "s"},
        {"kind": "at_least", "methods": ["flowe"], "than": "byol", "metric": "mIoU_small",
         "suites": ["cityscapes_linear"], "source": "s"}], board)
    met = {(c["kind"], c["method"]): c["met"] for c in checks}
    assert met == {("beats", "byol"): False, ("beats", "flowe"): True,
                   ("best", "supervised"): True, ("at_least", "flowe"): True}
    beats_byol = next(c for c in checks if c["method"] == "byol")
    assert beats_byol["difference"] == pytest.approx(1.0) and "needs > 2" in beats_byol["text"]
    small = next(c for c in checks if c["kind"] == "at_least")  # 2.1 vs 1.2 mIoU_small
    assert not small["informative"] and "Supervised reaches 3.10 < 5" in small["text"]
    found = leaderboard_rows(_table({"supervised": [60, 61, 62], "byol": [11, 12, 13],
                                     "flowe": [20, 21, 22]}), ["supervised", "byol", "flowe"])
    (small,) = check_expectations([
        {"kind": "at_least", "methods": ["flowe"], "than": "byol", "metric": "mIoU_small",
         "suites": ["cityscapes_linear"], "source": "s"}], found)
    assert small["informative"] and small["met"]  # Supervised finds them: 6.1
    tiny = leaderboard_rows(_table({"byol": [0.1, 0.2], "flowe": [0.0, 0.0]}), ["byol", "flowe"])
    (check,) = check_expectations([
        {"kind": "at_least", "methods": ["flowe"], "than": "byol", "metric": "mIoU",
         "suites": ["cityscapes_linear"], "source": "s"}], tiny)
    assert not check["met"] and not check["informative"] and "uninformative" in check["text"]


def test_a_changed_method_config_changes_only_its_own_runs(tmp_path, monkeypatch):
    study = Study(load_study("tiny"), tmp_path)
    before = {m: study.run_folder(m, 0) for m in study.methods}
    original = Study.pretrain_config

    def changed(self, method, lr=None):
        config = original(self, method, lr)
        return apply_overrides(config, ["schedule.lr=0.2"]) if method == "flowe" else config

    monkeypatch.setattr(Study, "pretrain_config", changed)
    after = {m: study.run_folder(m, 0) for m in study.methods}
    assert [m for m in before if before[m] != after[m]] == ["flowe"]
    assert study.run_folder("flowe", 1).name == "seed1"


def test_source_fingerprint_follows_the_method_module():
    byol = source_fingerprint(get_method_class("byol"))
    assert byol == source_fingerprint(get_method_class("byol_video"))  # one module
    assert byol != source_fingerprint(get_method_class("flowe"))


def test_a_change_to_shared_pretraining_code_changes_every_method_key(tmp_path):
    from benchmarks.study import pretraining_fingerprint
    for f in ("pretrain/train.py", "pretrain/methods/other.py", "core/runtime.py"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x = 1\n")
    byol = get_method_class("byol")
    before = pretraining_fingerprint(byol, root=tmp_path)
    (tmp_path / "pretrain/methods/other.py").write_text("x = 2\n")  # another method's file
    assert pretraining_fingerprint(byol, root=tmp_path) == before
    (tmp_path / "pretrain/train.py").write_text("x = 2\n")  # the loop
    assert pretraining_fingerprint(byol, root=tmp_path) != before


@pytest.mark.parametrize("name", sorted(METHODS))
def test_gpu_study_preset_runs_at_tiny_size_on_cpu(name, tiny_root, tmp_path):
    """The `gpu` preset cannot run here; its configs are checked by one step of each
    method at tiny size (arch, views and batch shrunk, everything else as in the preset)."""
    from pretrain.data.samples import make_samples
    from pretrain.data.video import VideoSource
    from pretrain.flow import get_estimator
    from pretrain.train import PretrainSchedule, pretrain
    spec = load_study("gpu")
    config = load_preset(name, spec["pretrain_preset"])
    assert config["model"]["arch"] == "resnet50"
    small = ["model.arch=resnet18", "model.hidden=32", "model.out_dim=16",
             "model.view_size=[32, 64]", "schedule.batch_size=2", "schedule.steps=1",
             "data.repeats=1"]
    if get_method_class(name).samples == "pairs":
        small.append("data.dt_frames=[1, 2]")
    elif get_method_class(name).needs_flow:
        small.append("data.clip_frames=3")
    if "subcrop_size" in config["model"]:
        small.append("model.subcrop_size=[32, 32]")
    if "shuffle_bn_group" in config["model"]:
        small.append("model.shuffle_bn_group=2")
    small += data_overrides(name, tiny_root)
    resolved = resolve(name, apply_overrides(config, small), num_videos=3, seed=0)
    method = get_method_class(name)(**resolved["model"])
    source = VideoSource(tiny_root / "bdd100k" / "videos" / "train")
    samples = make_samples(get_method_class(name).samples, source, resolved["data"])
    curve = pretrain(method, samples, PretrainSchedule(**resolved["schedule"]), out_dir=tmp_path,
                     estimator=get_estimator("gt"), progress=False, log=lambda *_: None)
    assert len(curve) == 1 and math.isfinite(curve[0]["loss"])


def test_a_study_takes_every_method_with_its_preset_less_what_it_leaves_out(tmp_path,
                                                                           monkeypatch):
    import yaml

    import benchmarks.study as study
    from pretrain.catalogue import method_names
    text = (study.STUDY_DIR / "tiny.yaml").read_text()
    monkeypatch.setattr(study, "STUDY_DIR", tmp_path)
    (tmp_path / "tiny.yaml").write_text(text)
    assert load_study("tiny")["methods"] == ["scratch", "supervised", *method_names()]
    doc = yaml.safe_load(text)
    (tmp_path / "fewer.yaml").write_text(yaml.safe_dump({**doc, "leave_out": ["byol_crop"]}))
    assert "byol_crop" not in load_study("fewer")["methods"]
    (tmp_path / "listed.yaml").write_text(yaml.safe_dump({**doc, "methods": ["flowe"]}))
    with pytest.raises(StudyError, match="leave_out"):
        load_study("listed")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({**doc, "leave_out": ["flowee"]}))
    with pytest.raises(StudyError, match="flowee"):
        load_study("typo")


def test_an_interrupted_study_keeps_the_time_it_spent(tmp_path, monkeypatch):
    import json
    study = Study(load_study("tiny"), tmp_path)
    monkeypatch.setattr(Study, "ensure_world", lambda self: {})

    def killed(self, method, seed):
        raise KeyboardInterrupt

    monkeypatch.setattr(Study, "pretrain", killed)
    with pytest.raises(KeyboardInterrupt):
        study.run()
    study.record_wall_time(2.0)  # the invocation that finishes it
    times = json.loads((tmp_path / "study_time.json").read_text())
    assert [i.get("interrupted", False) for i in times["invocations"]] == [True, False]
    assert times["total"] == pytest.approx(times["invocations"][0]["seconds"] + 2.0, abs=0.05)


def test_the_lr_grid_chooses_on_a_held_out_training_slice_and_never_reads_val(
        tiny_root, tmp_path, monkeypatch):
    """Each factor's checkpoint is scored by kNN on held-out *training* images, and the
    best held-out score chooses; building any other split fails the test."""
    import shutil
    import readout.datasets as datasets
    spec = dict(load_study("tiny"), lr_grid={
        "factors": [0.5, 1, 2], "suite": "cityscapes_knn", "scale": "smoke",
        "holdout": 0.25, "source": "test"})
    study = Study(validate_study(spec, "test"), tmp_path, methods=["byol"], device="cpu",
                  progress=False, log=lambda *_: None)
    shutil.copytree(tiny_root, study.data)
    built = []
    original = datasets.build_dataset

    def no_val(name, root=None, split="train", **kw):
        built.append(split)
        assert split == "train", f"the lr grid read the {split} split"
        return original(name, root, split, **kw)

    monkeypatch.setattr(datasets, "build_dataset", no_val)
    lr = study.choose_lr("byol")
    assert set(built) == {"train"}
    rows = study.lr_table
    assert [r["factor"] for r in rows] == [0.5, 1, 2] and sum(r["chosen"] for r in rows) == 1
    best = max(rows, key=lambda r: (r["heldout_mIoU"], -abs(math.log(r["factor"]))))
    assert best["chosen"] and lr == pytest.approx(study.paper_lr("byol") * best["factor"])
    assert all(r["heldout_images"] == 2 for r in rows)  # 25 % of the 8 training images
    # the study's own seed-0 run is the chosen grid run, not a fourth pretraining
    assert study.run_folder("byol", 0) == study.run_folder("byol", 0, lr)
    folders = {study.run_folder("byol", 0, study.paper_lr("byol") * f) for f in (0.5, 1, 2)}
    assert len(folders) == 3 and all((f / "backbone.pth").is_file() for f in folders)
