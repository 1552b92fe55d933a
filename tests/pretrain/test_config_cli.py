import json
import shutil
import subprocess

import pytest
import torch
import yaml

from benchmarks.cli import main as bench
from pretrain.config import ConfigError, apply_overrides, load_preset, resolve
from pretrain.methods import METHODS, get_method_class
from tests.helpers import truncated_but_opening_copy


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("preset", ["paper", "smoke"])
def test_every_method_has_valid_cited_presets(name, preset):
    config = load_preset(name, preset)
    assert config["cited"].strip()
    get_method_class(name)  # the model section names only constructor arguments
    resolved = resolve(name, config, num_videos=100, seed=0)
    assert resolved["schedule"]["steps"] >= 1


def test_paper_numbers_are_the_papers():
    poodle = load_preset("poodle", "paper")
    assert poodle["model"]["subcrops"] == 6 and poodle["model"]["alpha"] == [0.1, 0.5]
    assert poodle["schedule"]["lr"] == 5e-4 and poodle["schedule"]["optimizer"] == "adamw"
    flowe = load_preset("flowe", "paper")
    assert flowe["model"]["affine_scale"] == [0.5, 2.0] and flowe["model"]["output_stride"] == 8
    assert flowe["schedule"]["lr"] == 0.1 and flowe["data"]["dt_seconds"] == 0.5


def test_epochs_become_steps_with_repeated_sampling():
    config = load_preset("poodle", "paper")
    s = resolve("poodle", config, num_videos=1000, seed=3)["schedule"]
    # an epoch visits each of 1000 videos once, 2 pairs per visit: 2000 / 128 = 15.625 steps;
    # the authors' 300 epochs count each visit twice (src/train.py epoch_increment = 2): 150
    assert s["steps"] == 2344 and s["warmup_steps"] == 16 and s["seed"] == 3
    config = apply_overrides(config, ["data.repeats=4"])
    assert resolve("poodle", config, num_videos=1000, seed=3)["schedule"]["steps"] == 4688


def test_unknown_keys_and_bad_overrides_fail():
    config = load_preset("byol", "smoke")
    with pytest.raises(ConfigError, match="unknown key.*momentum"):
        resolve("byol", apply_overrides(config, ["schedule.momentum=0.9"]), num_videos=4, seed=0)
    with pytest.raises(ConfigError, match="unknown key.*subcrops"):
        resolve("byol", apply_overrides(config, ["model.subcrops=6"]), num_videos=4, seed=0)
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(config, ["schedule.lr"])
    config = apply_overrides(config, ["schedule.epochs=2", "model.view_size=[16, 16]"])
    assert "steps" not in config["schedule"] and config["model"]["view_size"] == [16, 16]
    with pytest.raises(KeyError, match="poodle"):
        load_preset("simclr", "paper")


def test_bench_pretrain_runs_resumes_and_exports(tiny_root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["pretrain", "--method", "poodle", "--preset", "smoke", "--flow", "gt",
            "--videos", str(tiny_root / "bdd100k" / "videos"), "--out", str(out),
            "--no-progress", "schedule.steps=3", "schedule.checkpoint_every=1"]
    assert bench(argv + ["--stop-after", "2"]) == 0
    assert "stopped; rerun" in capsys.readouterr().out and not (out / "backbone.pth").exists()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / f".pretrain_state.pth.{dead.pid}.tmp").write_bytes(b"killed mid-write")
    assert bench(argv) == 0
    printed = capsys.readouterr().out
    assert "resuming pretraining from step 2" in printed
    assert "removed 1 temporary file(s) of killed runs" in printed
    assert not list(out.rglob("*.tmp"))
    ck = torch.load(out / "backbone.pth", weights_only=True)
    assert ck["format"] == "flowssl-backbone/1" and ck["meta"]["method"] == "poodle"
    assert ck["decoder"]["kind"] == "sdm" and "laterals.0.weight" in ck["decoder"]["state_dict"]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["schedule"]["steps"] == 3 and ck["meta"]["config"]["model"] == saved["model"]
    # another config into the same folder is refused, not mixed
    assert bench(argv[:-1] + ["schedule.lr=0.1"]) == 2
    assert "another config" in capsys.readouterr().err
    assert bench(["checkpoint", "info", str(out / "backbone.pth")]) == 0
    assert "sdm" in capsys.readouterr().out


def _registered(kind: str) -> list[str]:
    from benchmarks.suite import suite_names
    from pretrain.flow.estimators import ESTIMATORS
    from readout.datasets import DATASETS
    from readout.datasets.base import SegmentationDataset
    return {"methods": sorted(METHODS), "estimators": sorted(ESTIMATORS),
            "suites": suite_names(), "datasets": sorted(DATASETS),
            "segmentation datasets": sorted(n for n, c in DATASETS.items()
                                            if issubclass(c, SegmentationDataset))}[kind]


@pytest.mark.parametrize("command, kind", [
    (["pretrain"], "methods"), (["study"], "methods"), (["pretrain"], "estimators"),
    (["flow", "precompute"], "estimators"), (["run"], "suites"),
    (["data", "check"], "datasets"), (["data", "stats"], "segmentation datasets")])
def test_help_lists_every_registered_name(capsys, command, kind):
    with pytest.raises(SystemExit):
        bench([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    missing = [name for name in _registered(kind) if name not in text]
    assert not missing, f"bench {' '.join(command)} --help misses {kind} {missing}"


def test_the_catalogue_is_the_registry_and_every_method_has_a_label():
    from benchmarks.leaderboard import method_label
    from pretrain.catalogue import method_entries
    assert sorted(e.name for e in method_entries()) == sorted(METHODS)
    labels = [method_label(name) for name in METHODS]
    assert len(set(labels)) == len(labels) and not set(labels) & set(METHODS)


def test_workers_and_resume_do_not_change_what_is_trained_even_with_bad_videos(
        tiny_root, tmp_path):
    """A truncated video that still opens, a non-video and an empty file among the videos:
    0 or 1 DataLoader workers, and an interrupted run resumed, train the same weights and
    count the same skipped reads."""
    videos = tmp_path / "videos"
    shutil.copytree(tiny_root / "bdd100k" / "videos", videos)
    good = sorted(videos.rglob("*.mov"))[0]
    for k in range(3):
        truncated_but_opening_copy(good, videos / "train" / f"truncated{k}.mp4")
    (videos / "train" / "notes.mp4").write_text("not a video")
    (videos / "train" / "empty.mov").write_bytes(b"")
    runs = {}
    for name, workers, stops in (("w0", 0, ()), ("w1", 1, ()), ("resumed", 0, (2,))):
        out = tmp_path / name
        argv = ["pretrain", "--method", "byol_video", "--preset", "smoke", "--videos",
                str(videos), "--out", str(out), "--no-progress", "--workers", str(workers),
                "schedule.steps=3", "schedule.checkpoint_every=1"]
        for stop in stops:
            assert bench(argv + ["--stop-after", str(stop)]) == 0
        assert bench(argv) == 0
        runs[name] = (torch.load(out / "backbone.pth", weights_only=True)["state_dict"],
                      [c["skipped_videos"] for c in json.loads((out / "curve.json").read_text())])
    weights, skips = runs["w0"]
    assert sum(skips) > 0  # bad files were met
    for name in ("w1", "resumed"):
        assert runs[name][1] == skips
        assert all(torch.equal(weights[k], runs[name][0][k]) for k in weights)


@pytest.mark.parametrize("override, says", [
    ("schedule.steps=0", "schedule.steps: must be a whole number >= 1, got 0"),
    ("schedule.steps=-3", "schedule.steps: must be a whole number >= 1"),
    ("schedule.batch_size=0", "schedule.batch_size: must be a whole number >= 1"),
    ("schedule.checkpoint_every=0", "schedule.checkpoint_every: must be a whole number"),
    ("schedule.lr=0", "schedule.lr: must be > 0"),
    ("model.ema_base=1.5", "model.ema_base: must be in [0, 1]"),
    ("schedule.optimizer=adam", "schedule.optimizer: 'adam' is not one of lars, sgd, adamw"),
    ("schedule.epochs=0", "schedule.epochs: must be > 0"),
    ("data.repeats=0", "data.repeats: must be a whole number >= 1"),
    ("data.dt_frames=[3, 1]", "data.dt_frames: a whole number > 0 or a [min, max]"),
    ("model.view_size=[0, 16]", "model.view_size: [height, width], whole numbers >= 1"),
    ("model.initial_scale=[1.25, 0.75]", "model.initial_scale: [min, max], numbers > 0"),
    ("model.rotation=.nan", "model.rotation: must be >= 0, got nan"),
    ("model.hidden=0", "model.hidden: must be a whole number >= 1"),
])
def test_numbers_out_of_range_fail_naming_the_key_and_the_range(override, says):
    config = apply_overrides(load_preset("flowe", "smoke"), [override])
    with pytest.raises(ConfigError) as e:
        resolve("flowe", config, num_videos=4, seed=0)
    assert says in str(e.value) and str(e.value).startswith("flowe config.")


@pytest.mark.parametrize("argv, says", [
    (["run", "--suite", "cityscapes_linear", "--checkpoint", "x.pth", "--seeds", "0"],
     "argument --seeds: 0 is less than 1"),
    (["pretrain", "--method", "byol", "--videos", "v", "--out", "o", "--workers", "-1"],
     "argument --workers: -1 is less than 0"),
    (["run", "--suite", "cityscapes_linear", "--checkpoint", "x.pth", "--seeds", "two"],
     "argument --seeds: 'two' is not a whole number"),
])
def test_bad_counts_on_the_command_line_are_one_line_errors(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        bench(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and says in err and len(err.splitlines()) == 1


def test_an_unknown_decoder_order_fails_naming_the_key_and_the_choices():
    config = apply_overrides(load_preset("poodle", "smoke"), ["model.decoder_order=eq3"])
    with pytest.raises(ConfigError, match=r"model.decoder_order: 'eq3' is not one of "
                                          r"authors, paper"):
        resolve("poodle", config, num_videos=4, seed=0)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_sync_bn_defaults_to_what_the_methods_authors_do(name):
    """BYOL (cross-replica BN), FlowE, PooDLe and PixPro (convert_sync_batchnorm)
    synchronise; MoCo v2, DenseCL and PiCO (MoCo-v2's design; its frozen encoder has fixed
    statistics) keep per-GPU BatchNorm (shuffle BN; DenseCL's configs use type='BN').
    --sync-bn / --no-sync-bn override."""
    from pretrain.cli import OneLineParser, add_arguments
    parser = OneLineParser()
    add_arguments(parser)
    base = ["--method", name, "--videos", "v", "--out", "o"]
    assert parser.parse_args(base).sync_bn is None
    assert parser.parse_args(base + ["--no-sync-bn"]).sync_bn is False
    per_gpu = ("moco_v2", "densecl", "pico", "static_video", "static_frame")
    assert get_method_class(name).sync_batchnorm is (name not in per_gpu)
