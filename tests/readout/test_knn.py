import numpy as np
import pytest
import torch

from readout.backbone import scratch_checkpoint
from readout.knn import fill_memory, nearest, patch_labels, rare_first
from readout.model import build_segmentation_model
from readout.train import evaluate

K = 4  # classes


class Stripes(torch.utils.data.Dataset):
    """Noise images whose labels are vertical stripes two feature cells (16 px) wide, so
    that every output-stride-8 cell is pure and bilinear upsampling keeps it."""

    def __init__(self, n=3, size=(48, 64), seed=0):
        rng = np.random.default_rng(seed)
        self.items = []
        for _ in range(n):
            image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            stripe = rng.integers(0, K, size=size[1] // 16)
            self.items.append({"image": image,
                               "label": np.repeat(stripe, 16)[None].repeat(size[0], 0)
                               .astype(np.uint8)})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _knn_model(k):
    torch.manual_seed(0)
    return build_segmentation_model(scratch_checkpoint("resnet18"), "knn", K,
                                    head_kwargs={"k": k, "temperature": 0.02},
                                    log=lambda *_: None)


def _fill(model, ds):
    return fill_memory(model, ds, memory_size=10 ** 6, augment_epochs=1, resize=None,
                       crop=None, flip=False, seed=0, device="cpu", progress=False)


def test_k1_with_the_validation_images_in_memory_is_perfect():
    ds = Stripes()
    model = _knn_model(k=1)
    info = _fill(model, ds)
    assert info["memory"] == 3 * 6 * 8 and info["feature_grid"] == [6, 8]
    metrics = evaluate(model, ds, num_classes=K, device="cpu", progress=False)
    assert metrics["mIoU"] == pytest.approx(100.0)


def test_shuffled_memory_labels_give_about_chance():
    ds = Stripes(n=6, seed=1)
    model = _knn_model(k=1)
    _fill(model, ds)
    g = torch.Generator().manual_seed(0)
    model.head.memory_labels = model.head.memory_labels[
        torch.randperm(len(model.head.memory_labels), generator=g)]
    mIoU = evaluate(model, ds, num_classes=K, device="cpu", progress=False)["mIoU"]
    chance = 100 / (2 * K - 1)  # IoU of independent uniform predictions of K classes
    assert mIoU < 2 * chance, (mIoU, chance)


def test_nearest_is_exact_across_chunks():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(37, 8, generator=g), dim=1)
    m = torch.nn.functional.normalize(torch.randn(101, 8, generator=g), dim=1)
    want_v, want_i = (q @ m.T).topk(5, dim=1)
    for chunk in (1, 7, 64, 10 ** 6):
        v, i = nearest(q, m, 5, chunk=chunk)
        assert torch.allclose(v, want_v) and torch.equal(i, want_i)


def test_patch_labels_average_pixels_and_drop_ignored_cells():
    label = torch.full((16, 16), 255)
    label[:8, :8] = 1
    label[:8, 8:] = 2
    label[:8, 12:] = 0  # half of the top-right cell
    label[8:, :4] = 3  # half of the bottom-left cell, the rest ignored
    dist, keep = patch_labels(label, (2, 2), 4)
    assert keep.tolist() == [True, True, True, False]
    assert dist[0].tolist() == [0, 1, 0, 0]
    assert dist[1].tolist() == [0.5, 0, 0.5, 0]
    assert dist[2].tolist() == [0, 0, 0, 1]  # ignored pixels do not count


def test_rare_first_prefers_cells_with_classes_rare_in_the_image():
    dist = torch.zeros(64, 3)
    dist[:, 0] = 1
    dist[5] = torch.tensor([0.0, 1.0, 0.0])
    g = torch.Generator().manual_seed(0)
    picks = [int(rare_first(dist, 1, g)[0]) for _ in range(200)]
    assert picks.count(5) > 60  # uniform sampling would pick it ~3 times in 200
