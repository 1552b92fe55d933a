import copy
import json

import pytest
import yaml

from benchmarks.suite import (TASKS, SuiteError, load_suite, resolve_suite, suite_hash,
                              suite_names, validate_suite)
from readout.detection import DETECTORS
from readout.heads import HEADS, RETRIEVAL_HEADS

EXPECTED = {"cityscapes_linear", "cityscapes_deeplabv3", "cityscapes_upernet", "bdd_linear",
            "bdd_deeplabv3", "bdd_upernet", "ade20k_linear", "ade20k_upernet",
            "ade20k_upernet_finetune", "bdd_det_c4", "bdd_det_fpn"}


def test_every_issue_suite_exists():
    assert EXPECTED <= set(suite_names())


@pytest.mark.parametrize("name", suite_names())
def test_suite_is_valid_and_cites_every_number(name):
    suite = load_suite(name)
    assert suite["name"] == name
    assert all(suite["source"][k].strip() for k in TASKS[suite["task"]].cited)
    smoke = resolve_suite(name, scale="smoke")
    assert smoke["scale"] == "smoke" and smoke["protocol"].get("batch_size", 0) <= 2
    assert smoke["protocol"].get("iterations", 0) < 10 and smoke["protocol"].get("epochs", 0) <= 1


def test_paper_numbers():
    bdd = load_suite("bdd_linear")["protocol"]
    assert (bdd["iterations"], bdd["batch_size"], bdd["lr"], bdd["crop"]) == (
        60000, 16, 0.02, [512, 1024])
    assert bdd["resize"] == {"short_side": [512, 2048]}
    cs = load_suite("cityscapes_linear")["protocol"]
    assert (cs["iterations"], cs["batch_size"], cs["lr"]) == (40000, 8, 0.01)
    ade = load_suite("ade20k_upernet")["protocol"]
    assert (ade["iterations"], ade["batch_size"], ade["weight_decay"], ade["crop"]) == (
        160000, 16, 0.0005, [512, 512])
    assert load_suite("ade20k_upernet_finetune")["finetune"] is True
    assert load_suite("ade20k_linear")["protocol"] == {**bdd}
    pico = load_suite("cityscapes_pico_linear")["protocol"]  # PiCO App. A.2.3
    assert (pico["iterations"], pico["batch_size"], pico["lr"], pico["lr_steps"],
            pico["crop"], pico["schedule"]) == (65000, 32, 0.01, [40000, 55000], [512, 1024],
                                                "step")
    assert pico["resize"] == {"short_side": [512, 512]}
    for name in ("bdd_det_c4", "bdd_det_fpn"):  # FlowE Sec. 4.2
        det = load_suite(name)["protocol"]
        assert (det["epochs"], det["batch_size"], det["lr"], det["lr_steps"], det["gamma"]) == (
            12, 16, 0.02, [8, 11], 0.1)


@pytest.mark.parametrize("name", ["cityscapes_deeplabv3", "bdd_deeplabv3"])
@pytest.mark.parametrize("scale", [None, "smoke"])
def test_deeplab_v3_suites_are_the_authors_detectron2_configs(name, scale):
    """rioyokotalab/detectron2 dev-v0.6 projects/DeepLab configs: 1000 warmup iterations
    from 1/1000, no decay on norms, cross-entropy, pooling over crop / 16; BDD no flip and
    a fixed 1024x2048 test size."""
    suite = resolve_suite(name, scale=scale)
    p = suite["protocol"]
    assert p["warmup_factor"] == 0.001 and p["weight_decay_norm"] == 0.0
    assert p["loss"] == "cross_entropy"
    assert suite["head_options"]["pool_kernel"] == [c // 16 for c in p["crop"]]
    if scale is None:
        assert p["warmup_iterations"] == 1000
        assert (p["batch_size"], p["lr"]) == ((8, 0.01) if name.startswith("city") else (16, 0.02))
    assert p["flip"] is name.startswith("city")
    assert ("resize" in suite["eval"]) is name.startswith("bdd")


def test_detection_epochs_become_iterations():
    from benchmarks.runner import protocol_kwargs
    kw = protocol_kwargs(resolve_suite("bdd_det_c4"), seed=0, train_images=70000)
    assert (kw["iterations"], kw["lr_steps"]) == (52500, (35000, 48125))
    assert kw["schedule"] == "step" and kw["warmup_iterations"] == 1000


def test_detection_suites_refuse_segmentation_keys():
    det = load_suite("bdd_det_c4")
    for key, value, match in (("eval", {"mode": "whole"}, "no \\['eval'\\]"),
                              ("finetune", True, "frozen backbone only")):
        with pytest.raises(SuiteError, match=match):
            validate_suite({**copy.deepcopy(det), key: value})
    with pytest.raises(SuiteError, match="valid keys: .*protocol.epochs"):
        resolve_suite("bdd_det_c4", overrides=["protocol.iterations=5"])
    with pytest.raises(KeyError, match="faster_rcnn_c4"):
        validate_suite({**copy.deepcopy(det), "head": "retinanet"})


def test_every_registered_head_has_a_suite():
    assert {load_suite(n)["head"] for n in suite_names()} >= (
        set(HEADS) | set(DETECTORS) | set(RETRIEVAL_HEADS))


def test_knn_suites_cite_hummingbird_and_refuse_training_keys():
    for name in ("cityscapes_knn", "bdd_knn", "ade20k_knn"):
        p = load_suite(name)["protocol"]
        assert (p["k"], p["temperature"]) == (30, 0.02)
        assert "Hummingbird" in load_suite(name)["source"]["k"]
    with pytest.raises(SuiteError, match="valid keys"):
        resolve_suite("cityscapes_knn", overrides=["protocol.iterations=5"])
    with pytest.raises(SuiteError, match="temperature: must be > 0"):
        resolve_suite("cityscapes_knn", overrides=["protocol.temperature=0"])
    with pytest.raises(SuiteError, match="frozen backbone only"):
        resolve_suite("cityscapes_knn", overrides=["finetune=true"])


def test_head_options_are_checked_against_the_head():
    r = resolve_suite("bdd_linear", overrides=["head_options.norm=batchnorm"])
    assert r["head_options"] == {"norm": "batchnorm"}
    assert suite_hash(r) != suite_hash(resolve_suite("bdd_linear"))
    with pytest.raises(SuiteError, match="unknown key.*colour.*valid keys: \\['norm'\\]"):
        resolve_suite("bdd_linear", overrides=["head_options.colour=1"])
    with pytest.raises(SuiteError, match="head_options: deeplab_v1 norm 'layer'"):
        resolve_suite("bdd_linear", overrides=["head_options.norm=layer"])


def test_unknown_keys_fail():
    suite = load_suite("bdd_linear")
    bad = copy.deepcopy(suite)
    bad["protocol"]["lr_warmup"] = 5
    with pytest.raises(SuiteError, match="lr_warmup"):
        validate_suite(bad)
    bad = copy.deepcopy(suite)
    bad["colour"] = "red"
    with pytest.raises(SuiteError, match="colour"):
        validate_suite(bad)
    bad = copy.deepcopy(suite)
    del bad["source"]["lr"]
    with pytest.raises(SuiteError, match="no source"):
        validate_suite(bad)
    bad = copy.deepcopy(suite)
    bad["protocol"]["iterations"] = "many"
    with pytest.raises(SuiteError, match="expected int"):
        validate_suite(bad)


def test_overrides_and_their_errors():
    r = resolve_suite("bdd_linear", scale="smoke", overrides=["protocol.iterations=7",
                                                              "eval.mode=slide",
                                                              "eval.crop=[32, 32]",
                                                              "eval.stride=[16, 16]"])
    assert r["protocol"]["iterations"] == 7 and r["overrides"][0] == "protocol.iterations=7"
    assert suite_hash(r) != suite_hash(resolve_suite("bdd_linear", scale="smoke"))
    with pytest.raises(SuiteError, match="valid keys: .*protocol.lr"):
        resolve_suite("bdd_linear", overrides=["protocol.learning_rate=1"])
    with pytest.raises(SuiteError, match="no scale"):
        resolve_suite("bdd_linear", scale="huge")
    with pytest.raises(KeyError, match="bdd_linear"):
        load_suite("kitti_linear")


def test_resolved_suite_is_plain_yaml():
    r = resolve_suite("cityscapes_upernet", scale="smoke")
    assert yaml.safe_load(yaml.safe_dump(r)) == r
    json.dumps(r)


@pytest.mark.parametrize("suite, override, says", [
    ("cityscapes_linear", "protocol.iterations=0", "iterations: must be >= 1, got 0"),
    ("cityscapes_linear", "protocol.iterations=-5", "iterations: must be >= 1, got -5"),
    ("cityscapes_linear", "protocol.checkpoint_every=0", "checkpoint_every: must be >= 1"),
    ("cityscapes_linear", "protocol.batch_size=0", "batch_size: must be >= 1"),
    ("cityscapes_linear", "protocol.lr=.nan", "lr: must be > 0"),
    ("cityscapes_linear", "protocol.momentum=1", "momentum: must be in [0, 1)"),
    ("cityscapes_linear", "protocol.iterations=2.5", "iterations: expected int"),
    ("cityscapes_linear", "protocol.crop=[0, 64]", "crop: two whole numbers >= 1"),
    ("cityscapes_linear", "protocol.resize={short_side: [96, 64]}", "short_side: [min, max]"),
    ("cityscapes_linear", "eval.stride=[0, 8]", "eval.stride: two whole numbers"),
    ("bdd_det_c4", "protocol.epochs=0", "epochs: must be > 0"),
    ("bdd_det_c4", "protocol.warmup_factor=0", "warmup_factor: must be in (0, 1]"),
    ("cityscapes_knn", "protocol.k=0", "k: must be >= 1"),
    ("cityscapes_knn", "protocol.temperature=0", "temperature: must be > 0"),
])
def test_numbers_out_of_range_fail_naming_the_key_and_the_range(suite, override, says):
    with pytest.raises(SuiteError) as e:
        resolve_suite(suite, scale="smoke", overrides=[override])
    assert says in str(e.value)


def test_segmentation_schedules_take_their_own_keys():
    pico = load_suite("cityscapes_pico_linear")
    no_steps = copy.deepcopy(pico)
    del no_steps["protocol"]["lr_steps"]
    with pytest.raises(SuiteError, match="schedule 'step' needs lr_steps"):
        validate_suite(no_steps)
    mixed = copy.deepcopy(load_suite("cityscapes_linear"))
    mixed["protocol"]["gamma"] = 0.1
    mixed["source"]["gamma"] = "x"
    with pytest.raises(SuiteError, match="gamma do not apply to schedule 'poly'"):
        validate_suite(mixed)
