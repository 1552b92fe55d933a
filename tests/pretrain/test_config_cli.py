import pytest
import torch
import yaml

from benchmarks.cli import main as bench
from pretrain.config import ConfigError, apply_overrides, load_preset, resolve
from pretrain.methods import METHODS, get_method_class


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
    config = apply_overrides(load_preset("poodle", "paper"), ["data.repeats=4"])
    s = resolve("poodle", config, num_videos=1000, seed=3)["schedule"]
    # an epoch visits each of 1000 videos once, 4 pairs per visit: 4000 / 128 = 31.25 steps
    assert s["steps"] == 9375 and s["warmup_steps"] == 63 and s["seed"] == 3


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
    assert bench(argv) == 0
    assert "resuming pretraining from step 2" in capsys.readouterr().out
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


def test_pretrain_help_lists_methods(capsys):
    with pytest.raises(SystemExit):
        bench(["pretrain", "--help"])
    assert "poodle" in capsys.readouterr().out


def test_dataloader_workers_do_not_change_what_is_trained(tiny_root, tmp_path):
    runs = {}
    for workers in (0, 1):
        out = tmp_path / f"w{workers}"
        assert bench(["pretrain", "--method", "byol_video", "--preset", "smoke", "--videos",
                      str(tiny_root / "bdd100k" / "videos"), "--out", str(out), "--no-progress",
                      "--workers", str(workers), "schedule.steps=2"]) == 0
        runs[workers] = torch.load(out / "backbone.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
