"""The one-pass learning-rate sweep of a linear readout (protocol.lr_sweep)."""
import json

import pytest
import torch

from benchmarks.lr_sweep import sweep_split
from benchmarks.runner import run_or_reuse
from benchmarks.suite import SuiteError, resolve_suite


def _run(r18, tiny_root, out, *overrides):
    resolved = resolve_suite("cityscapes_linear", scale="smoke",
                             overrides=["protocol.lr=0.05", *overrides])
    return run_or_reuse(resolved, r18, seed=0, data_root_dir=tiny_root, out_dir=out,
                        progress=False, log=lambda *_: None)


def _head(record) -> dict:
    from pathlib import Path
    state = torch.load(Path(record["run_dir"]) / "readout_checkpoint.pth", weights_only=True)
    return {k.replace("head.heads.0.", "head."): v for k, v in state["trainable"].items()}


def test_a_sweep_of_one_lr_is_the_plain_run_bit_for_bit(r18, tiny_root, tmp_path):
    plain = _run(r18, tiny_root, tmp_path / "plain")
    swept = _run(r18, tiny_root, tmp_path / "swept", "protocol.lr_sweep=[0.05]")
    assert swept["lr_sweep"] == {"lrs": [0.05], "holdout_images": 0, "selected_lr": 0.05,
                                 "selected_head": 0}
    for key in ("metrics", "per_class", "loss_curve"):  # NaN (an empty group) equals NaN
        assert json.dumps(swept[key], sort_keys=True) == json.dumps(plain[key], sort_keys=True)
    a, b = _head(plain), _head(swept)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_head_with_the_best_held_out_score_is_selected_and_every_head_is_kept(
        r18, tiny_root, tmp_path):
    lrs = [1e-5, 0.5, 0.05]
    record = _run(r18, tiny_root, tmp_path / "sweep", "protocol.lr_sweep=[1.0e-5, 0.5, 0.05]",
                  "protocol.lr_sweep_holdout=0.25", "protocol.iterations=6")
    sweep = record["lr_sweep"]
    assert sweep["lrs"] == lrs and sweep["holdout_images"] >= 1
    held = sweep["holdout_mIoU"]
    best = max(range(3), key=lambda k: (held[k], -k))
    assert sweep["selected_head"] == best and sweep["selected_lr"] == lrs[best]
    # the record's metrics are the selected head's on the evaluation split
    assert sweep["val_mIoU"][best] == record["metrics"]["mIoU"]
    assert all(isinstance(v, float) for v in sweep["val_mIoU"])
    # the heads differ: each trained with its own learning rate
    state = torch.load(tmp_path / "sweep" / "cityscapes_linear" / record["run_dir"].split(
        "cityscapes_linear/")[1] / "readout_checkpoint.pth", weights_only=True)["trainable"]
    weights = [v for k, v in state.items() if k.endswith("weight") and "heads." in k]
    assert not torch.equal(weights[0], weights[1])


def test_held_out_images_are_a_fixed_disjoint_slice_of_the_training_split():
    train, held = sweep_split(list(range(40)), [0.1, 0.01], 0.1, seed=3)
    assert len(held) == 4 and not set(train) & set(held) and sorted(train + held) == list(
        range(40))
    assert sweep_split(list(range(40)), [0.1, 0.01], 0.1, seed=3) == (train, held)
    assert sweep_split(list(range(40)), [0.1], 0.1, seed=3) == (list(range(40)), [])
    with pytest.raises(ValueError, match="cannot spare"):
        sweep_split([0], [0.1, 0.01], 0.1, seed=0)


@pytest.mark.parametrize("override, says", [
    ("protocol.lr_sweep=[]", "distinct learning rates > 0"),
    ("protocol.lr_sweep=[0.1, -1]", "distinct learning rates > 0"),
    ("protocol.lr_sweep=[1e-4, 0.1]", "write 1.0e-4"),
    ("protocol.lr_sweep_holdout=0.2", "only with lr_sweep"),
    ("finetune=true", "a finetuned one is trained by a single learning rate"),
])
def test_bad_sweeps_fail_naming_the_key(override, says):
    with pytest.raises(SuiteError, match=says):
        resolve_suite("cityscapes_linear", overrides=["protocol.lr_sweep=[0.1, 0.01]",
                                                      override]
                      if "holdout" not in override else [override])
