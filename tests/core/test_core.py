"""The shared core: the checkpoint contract is defined once, files are whole or absent."""
import os
import subprocess
from pathlib import Path

import pytest
import torch

from core.checkpoint import FORMAT, make_checkpoint
from core.inputs import normalize
from core.io import atomic_path, remove_stale_temporaries, save_torch

REPO = Path(__file__).resolve().parents[2]


def test_the_format_string_is_written_in_one_place():
    holders = [p.relative_to(REPO).as_posix() for folder in ("core", "pretrain", "readout",
                                                              "benchmarks")
               for p in (REPO / folder).rglob("*.py") if f'"{FORMAT}"' in p.read_text()]
    assert holders == ["core/checkpoint.py"]


def test_core_imports_neither_side():
    for p in (REPO / "core").rglob("*.py"):
        text = p.read_text()
        assert not any(f"import {m}" in text or f"from {m}" in text
                       for m in ("pretrain", "readout", "benchmarks", "mlflow")), p


def test_make_checkpoint_copies_detached_cpu_tensors():
    w = torch.ones(2, requires_grad=True)
    ck = make_checkpoint(arch="resnet18", state_dict={"w": w}, method="m",
                         decoder={"kind": "sdm", "state_dict": {"d": w}}, with_git_sha=False)
    assert ck["format"] == FORMAT and not ck["state_dict"]["w"].requires_grad
    w.data.add_(1)
    assert torch.equal(ck["state_dict"]["w"], torch.ones(2))
    assert ck["decoder"]["kind"] == "sdm" and set(ck["meta"]) >= {"method", "created"}


def test_a_failed_write_leaves_nothing_and_the_old_file_intact(tmp_path):
    target = tmp_path / "record.json"
    target.write_text("old")
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(28, "No space left on device")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    save_torch({"x": torch.zeros(1)}, tmp_path / "a.pth")
    assert torch.load(tmp_path / "a.pth", weights_only=True)["x"].shape == (1,)


def test_only_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / "sub" / f".state.pth.{dead.pid}.tmp"
    stale.parent.mkdir()
    stale.write_bytes(b"x" * 10)
    mine = tmp_path / f".state.pth.{os.getpid()}.tmp"
    mine.write_bytes(b"being written")
    said = []
    assert remove_stale_temporaries(tmp_path, recursive=True, log=said.append) == 1
    assert not stale.exists() and mine.exists() and "removed 1 temporary file" in said[0]


@pytest.mark.parametrize("output_stride", [32, 8])
def test_pretraining_and_readout_compute_the_same_trunk_and_decoder(output_stride, tmp_path):
    """A PooDLe network as pretraining runs it, exported, then rebuilt by the readout from
    the checkpoint file alone: the same features and the same decoder output."""
    from pretrain.checkpoint import backbone_checkpoint, write_checkpoint
    from pretrain.config import load_preset
    from pretrain.methods import get_method_class
    from readout.backbone import build_backbone, read_checkpoint
    from readout.model import build_segmentation_model
    torch.manual_seed(0)
    model = {**load_preset("poodle", "smoke")["model"], "output_stride": output_stride}
    method = get_method_class("poodle")(**model).eval()
    write_checkpoint(backbone_checkpoint(
        arch=model["arch"], state_dict=method.encoder.backbone_state_dict(),
        decoder=method.decoder_entry(), method="poodle", pretrain_data="",
        epochs=0, iterations=0, config={}), tmp_path / "poodle.pth")
    ck = read_checkpoint(tmp_path / "poodle.pth")
    dilation = {32: (False, False, False), 8: (False, True, True)}[output_stride]
    trunk = build_backbone(ck, dilation=dilation, log=lambda *_: None)
    x = torch.rand(2, 3, 64, 96)  # a view in [0, 1]; the readout feeds it normalised
    with torch.no_grad():
        ours, theirs = method.encoder(x), trunk(normalize(x))
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
        if output_stride == 32:  # the readout puts the decoder on the undilated trunk
            readout = build_segmentation_model(ck, "deeplab_v1", 19, log=lambda *_: None).eval()
            assert torch.equal(method.decoder(ours), readout.decoder(theirs))


def test_ranges_state_and_check_their_bounds():
    from core.values import Range
    assert str(Range(1)) == ">= 1" and str(Range(0, open_low=True)) == "> 0"
    assert str(Range(0, 1, open_high=True)) == "in [0, 1)"
    assert str(Range(0, whole=True, note="(0: off)")) == ">= 0 (0: off)"
    assert 0 in Range(0) and 0 not in Range(0, open_low=True) and 1 not in Range(0, 1,
                                                                               open_high=True)
    assert 2.0 not in Range(1, whole=True) and True not in Range(0) and float("nan") not in Range()


def test_threads_per_process_share_the_cores_and_set_torch_and_opencv(monkeypatch):
    import cv2
    from core.runtime import cpu_cores, limit_threads, set_threads, threads_per_process
    before = torch.get_num_threads(), cv2.getNumThreads()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads_per_process() == max(1, cpu_cores() // 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(4 * cpu_cores()))
    assert threads_per_process() == 1
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
        # the loop only lowers: a forked child's single thread must not grow (libgomp)
        assert limit_threads(4) == 1 and cv2.getNumThreads() == 1
        set_threads(2)
        assert limit_threads(1) == 1 and cv2.getNumThreads() == 1
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


SPEED_SCRIPTS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "benchmarks" /
                                        "speed").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("script", SPEED_SCRIPTS)
def test_every_speed_script_sets_and_states_its_threads(script, capsys):
    import importlib
    module = importlib.import_module(f"benchmarks.speed.{script}")
    with pytest.raises(SystemExit):
        module.main(["--help"])
    assert "--threads" in capsys.readouterr().out
