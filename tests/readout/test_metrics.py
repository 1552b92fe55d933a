import math

import numpy as np
import pytest
import torch

from readout.datasets.classes import cityscapes_train_to_label_ids
from readout.metrics import SegmentationMetric


def test_hand_computed_confusion_matrix():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    m = SegmentationMetric(4)
    m.update(pred, target)
    assert m.confusion.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    out = m.compute()
    # IoU: class0 1/(2+2-1)=1/3, class1 2/(2+3-2)=2/3, class2 1/(2+1-1)=1/2, class3 NaN
    assert out["IoU"][:3] == pytest.approx([100 / 3, 200 / 3, 50])
    assert math.isnan(out["IoU"][3])
    assert out["mIoU"] == pytest.approx((100 / 3 + 200 / 3 + 50) / 3)
    assert out["Acc"] == pytest.approx(100 * 4 / 6)
    assert out["mAcc"] == pytest.approx(100 * (1 / 2 + 1 + 1 / 2) / 3)


def test_groups_use_the_right_classes():
    target = torch.tensor([0, 1, 2, 3])
    pred = torch.tensor([0, 1, 0, 3])
    m = SegmentationMetric(4, class_groups={"small": [2, 3], "large": [0, 1]})
    m.update(pred, target)
    out = m.compute()  # IoU: 0 -> 1/2, 1 -> 1, 2 -> 0, 3 -> 1
    assert out["mIoU_large"] == pytest.approx(75.0)
    assert out["mIoU_small"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="outside"):
        SegmentationMetric(4, class_groups={"rare": [4]})


def test_batches_accumulate_and_shapes_are_free():
    rng = np.random.default_rng(0)
    t = torch.from_numpy(rng.integers(0, 5, (3, 7, 9)))
    p = torch.from_numpy(rng.integers(0, 5, (3, 7, 9)))
    whole, parts = SegmentationMetric(5), SegmentationMetric(5)
    whole.update(p, t)
    for i in range(3):
        parts.update(p[i].reshape(-1), t[i].reshape(-1))
    assert torch.equal(whole.confusion, parts.confusion)


def test_bad_inputs():
    m = SegmentationMetric(3)
    with pytest.raises(ValueError, match="differ"):
        m.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        m.update(torch.zeros(2, dtype=torch.long), torch.tensor([0, 7]))
    with pytest.raises(TypeError):
        m.update(torch.zeros(2), torch.zeros(2, dtype=torch.long))


def test_mIoU_equals_cityscapesscripts(tmp_path):
    """Same maps through cityscapesScripts' evaluateImgLists (label-id PNGs) and ours."""
    import cv2
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev
    from cityscapesscripts.helpers.labels import labels as cs_labels
    from readout.datasets.classes import cityscapes_label_to_train_lut

    rng = np.random.default_rng(1)
    to_id = cityscapes_train_to_label_ids()
    to_train = cityscapes_label_to_train_lut()
    all_ids = np.array([lab.id for lab in cs_labels if lab.id >= 0], np.uint8)
    ours = SegmentationMetric(19)
    preds, gts = [], []
    for i in range(3):
        gt_ids = all_ids[rng.integers(0, len(all_ids), (24, 40))]  # incl. ignored ids
        gt_ids[:, :10] = to_id[3]  # plenty of 'wall'
        pred_train = rng.integers(0, 17, (24, 40)).astype(np.uint8)  # never 17, 18
        pred_train[gt_ids == to_id[3]] = 3
        gp, pp = tmp_path / f"gt{i}.png", tmp_path / f"pred{i}.png"
        cv2.imwrite(str(gp), gt_ids)
        cv2.imwrite(str(pp), to_id[pred_train])
        gts.append(str(gp)), preds.append(str(pp))
        ours.update(torch.from_numpy(pred_train), torch.from_numpy(to_train[gt_ids]))
    args = ev.args
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    args.evalPixelAccuracy = False  # uses np.in1d, gone in numpy >= 2.4
    args.evalLabels = [lab.id for lab in cs_labels if lab.id >= 0 and not lab.ignoreInEval]
    result = ev.evaluateImgLists(preds, gts, args)
    got = ours.compute()
    ref = result["classScores"]
    for train_id, name in enumerate(lab.name for lab in sorted(
            (lab for lab in cs_labels if 0 <= lab.trainId < 255), key=lambda x: x.trainId)):
        if math.isnan(ref[name]):
            assert math.isnan(got["IoU"][train_id]), name
        else:
            assert got["IoU"][train_id] == pytest.approx(100 * ref[name], abs=1e-9), name
    assert got["mIoU"] == pytest.approx(100 * result["averageScoreClasses"], abs=1e-9)
