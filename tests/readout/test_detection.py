import json

import numpy as np
import pytest
import torch

from readout.backbone import scratch_checkpoint
from readout.coco_eval import coco_metrics, to_coco_results
from readout.datasets import build_dataset
from readout.datasets.bdd100k import det_to_coco
from readout.detection import DETECTORS, AlignedRoIPooler, build_detection_model
from readout.train import ReadoutSchedule, evaluate_detection, learning_rate, train_readout
from tests.helpers import lighter_detector

# What each readout trains, stated independently of the code's trainable_prefixes:
# FlowE Sec. 4.2 (C4: "a small convnet RPN and two linear layers"), FPN: FPN + RPN + box head.
TRAINED_MODULES = {
    "faster_rcnn_c4": ("rpn.head.", "roi_heads.box_predictor."),
    "faster_rcnn_fpn": ("backbone.fpn.", "rpn.head.", "roi_heads.box_head.",
                        "roi_heads.box_predictor."),
}
SCHEDULE = dict(iterations=4, batch_size=2, lr=0.02, momentum=0.9, weight_decay=1e-4,
                flip=True, checkpoint_every=2, schedule="step", lr_steps=(3,),
                warmup_iterations=2, seed=5)


def _model(head, seed=0):
    torch.manual_seed(seed)
    return lighter_detector(build_detection_model(scratch_checkpoint("resnet18"), head, 10,
                                                  log=lambda *_: None))


def _gt_results(ds):
    out = []
    for i in range(len(ds)):
        anns = [a for a in ds.annotations(i) if not a["iscrowd"]]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                  a["bbox"][1] + a["bbox"][3]] for a in anns]
        out += to_coco_results(ds.coco["images"][i]["id"], np.reshape(boxes, (-1, 4)),
                               [a["category_id"] for a in anns], np.ones(len(anns)))
    return out


def test_every_detector_is_tested():
    assert set(TRAINED_MODULES) == set(DETECTORS)


def test_ground_truth_as_detections_scores_100_on_the_synthetic_world(tiny_root):
    ds = build_dataset("bdd100k_det", tiny_root, "val")
    results = []
    for i in range(len(ds)):  # through the dataset items (xyxy boxes), as the model outputs
        item = ds[i]
        keep = item["iscrowd"] == 0
        results += to_coco_results(item["image_id"], item["boxes"][keep],
                                   item["labels"][keep], np.ones(keep.sum()))
    m = coco_metrics(ds.coco, results)
    assert m["mAP"] == pytest.approx(100) and m["AP50"] == pytest.approx(100)
    present = {a["category_id"] for a in ds.coco["annotations"] if not a["iscrowd"]}
    for k, ap in enumerate(m["AP"], start=1):
        assert (ap == pytest.approx(100)) if k in present else np.isnan(ap)


def test_ground_truth_fixture_with_crowd_clipped_and_empty_images(tmp_path):
    box = lambda x1, y1, x2, y2: {"x1": x1, "y1": y1, "x2": x2, "y2": y2}  # noqa: E731
    frames = [
        {"name": "a.jpg", "labels": [
            {"category": "car", "box2d": box(10, 20, 59, 69)},
            {"category": "other vehicle", "box2d": box(100, 100, 200, 180)},  # ignore region
            {"category": "truck", "box2d": box(1200, 600, 1400, 800)},  # partly outside
            {"category": "bus", "box2d": box(1300, 10, 1400, 50)}]},  # fully outside
        {"name": "empty.jpg", "labels": []},
        {"name": "ped.jpg", "labels": [{"category": "pedestrian", "box2d": box(5, 5, 40, 120)}]},
    ]
    path = tmp_path / "det_val.json"
    path.write_text(json.dumps(frames))
    coco = det_to_coco(path)

    class View:  # the dataset interface _gt_results reads
        def __init__(self, coco):
            self.coco = coco

        def __len__(self):
            return len(coco["images"])

        def annotations(self, i):
            return [a for a in coco["annotations"] if a["image_id"] == coco["images"][i]["id"]]

    results = _gt_results(View(coco))
    assert len(results) == 3
    assert coco_metrics(coco, results)["mAP"] == pytest.approx(100)
    # a detection on the crowd region is ignored, not a false positive
    crowd = to_coco_results(1, [[100, 100, 201, 181]], [3], [0.99])
    assert coco_metrics(coco, results + crowd)["mAP"] == pytest.approx(100)
    # the metric can fail: a shifted box, a missed object, no detections at all
    shifted = [dict(r, bbox=[r["bbox"][0] + 15, *r["bbox"][1:]]) for r in results]
    assert coco_metrics(coco, shifted)["mAP"] < 60
    assert coco_metrics(coco, results[1:])["mAP"] < 100
    empty = coco_metrics(coco, [])
    assert empty["mAP"] == 0 and empty["APl"] == 0  # the truck (clipped to 80x120) is large
    assert np.isnan(empty["APs"])  # no small boxes: COCOeval's -1 becomes NaN


def test_step_schedule_with_warmup_follows_detectron2():
    s = ReadoutSchedule(iterations=100, batch_size=16, lr=0.02, momentum=0.9,
                        weight_decay=1e-4, flip=True, checkpoint_every=10, schedule="step",
                        lr_steps=(60, 90), gamma=0.1, warmup_iterations=10,
                        warmup_factor=0.001)
    assert learning_rate(s, 0) == pytest.approx(0.02 * 0.001)
    assert learning_rate(s, 5) == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))
    assert learning_rate(s, 10) == pytest.approx(0.02)
    assert learning_rate(s, 59) == pytest.approx(0.02)
    assert learning_rate(s, 60) == pytest.approx(0.002)
    assert learning_rate(s, 95) == pytest.approx(0.0002)


def test_aligned_pooler_assigns_fpn_levels_by_box_size():
    feats = {f"p{k}": torch.full((1, 1, 1024 // 2 ** k, 1024 // 2 ** k), float(k))
             for k in (2, 3, 4, 5)}
    pool = AlignedRoIPooler(featmap_names=list(feats), strides=[4, 8, 16, 32], output_size=2)
    boxes = [torch.tensor([[0, 0, 20, 20], [0, 0, 112, 112], [0, 0, 224, 224],
                           [0, 0, 250, 250], [0, 0, 900, 900]], dtype=torch.float32)]
    out = pool(feats, boxes, [(1024, 1024)])
    # sqrt(area) 20 -> level 2 (clamped), 112 -> 3, 224 -> 4, 250 -> 4, 900 -> 5 (clamped)
    assert out[:, 0, 0, 0].tolist() == [2, 3, 4, 4, 5]


@pytest.mark.parametrize("head", sorted(DETECTORS))
def test_only_the_readout_modules_train(head, tiny_root, tmp_path):
    model = _model(head)
    trained = TRAINED_MODULES[head]
    frozen_before = {k: v.clone() for k, v in model.state_dict().items()
                     if not k.startswith(trained)}
    trained_before = {k: v.clone() for k, v in model.state_dict().items()
                      if k.startswith(trained)}
    assert any(k.startswith("roi_heads.box_head.res5.") for k in frozen_before) == (
        head == "faster_rcnn_c4")  # C4: res5 is the (frozen) box head
    ds = build_dataset("bdd100k_det", tiny_root, "train")
    curve = train_readout(model, ds, ReadoutSchedule(**SCHEDULE), device="cpu",
                          work_dir=tmp_path, progress=False)
    assert len(curve) == 4 and all(np.isfinite(c["loss"]) for c in curve)
    assert {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
            "loss_box_reg"} <= set(curve[0])
    after = model.state_dict()
    assert all(torch.equal(frozen_before[k], after[k]) for k in frozen_before)
    changed = {k for k in trained_before if not torch.equal(trained_before[k], after[k])}
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in changed} == {
        ".".join(p.split(".")[:2]) for p in trained}
    # gradients reach exactly the readout's parameters
    model.train()
    model.zero_grad(set_to_none=True)
    batch = type(model).collate([type(model).train_sample(ds[i], np.random.default_rng(i),
                                                          ReadoutSchedule(**SCHEDULE))
                                 for i in model.training_indices(ds)[:2]])
    sum(model.training_losses(model, batch, "cpu").values()).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    expected = {n for n, _ in model.named_parameters() if n.startswith(trained)}
    assert with_grad == expected and expected
    assert all(not m.training for m in model.backbone.trunk.modules())  # frozen BN stays eval


@pytest.mark.parametrize("head", sorted(DETECTORS))
def test_detection_resume_after_a_kill_matches_an_uninterrupted_run(head, tiny_root, tmp_path):
    ds = build_dataset("bdd100k_det", tiny_root, "train")
    full = _model(head)
    train_readout(full, ds, ReadoutSchedule(**SCHEDULE), device="cpu",
                  work_dir=tmp_path / "full", progress=False)
    killed = _model(head)
    train_readout(killed, ds, ReadoutSchedule(**SCHEDULE), device="cpu",
                  work_dir=tmp_path / "killed", stop_after=2, progress=False)
    resumed = _model(head, seed=7)  # a fresh process: readout initialised differently
    curve = train_readout(resumed, ds, ReadoutSchedule(**SCHEDULE), device="cpu",
                          work_dir=tmp_path / "killed", progress=False)
    assert [c["step"] for c in curve] == [1, 2, 3, 4]
    a, b = full.trainable_state_dict(), resumed.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluation_and_bf16_autocast_keep_boxes_in_fp32(tiny_root):
    model = _model("faster_rcnn_c4")
    ds = build_dataset("bdd100k_det", tiny_root, "val")
    m = evaluate_detection(model, ds, device="cpu", progress=False)
    assert 0 <= m["mAP"] <= 100 and len(m["AP"]) == 10
    from readout.transforms import to_tensor
    x = to_tensor(ds[0]["image"])
    # bf16 convolutions are slow on CPU: res5 on 1,000 proposals took a minute
    lighter_detector(model, proposals=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.backbone(x[None])
        logits, deltas = model.rpn.head(list(feats.values()))
        (det,) = model([x])
    assert all(f.dtype == torch.float32 for f in feats.values())
    assert logits[0].dtype == deltas[0].dtype == torch.float32
    assert det["boxes"].dtype == torch.float32


def test_training_skips_images_without_boxes(tiny_root):
    ds = build_dataset("bdd100k_det", tiny_root, "train")
    keep = type(_model("faster_rcnn_c4")).training_indices(ds)
    assert keep and all(any(not a["iscrowd"] for a in ds.annotations(i)) for i in keep)
    assert all(not any(not a["iscrowd"] for a in ds.annotations(i))
               for i in set(range(len(ds))) - set(keep))
