"""Training-free dense evaluation: nearest-neighbour retrieval segmentation over frozen
features (Hummingbird: Balazevic et al. 2023, "Towards In-context Scene Understanding";
details as released in open-hummingbird-eval, ``hbird/hbird_eval.py``).

- Memory bank: patch features (one per feature-map cell, L2-normalised) of the training
  split with their labels, the patch label being the class distribution of its pixels
  (one-hot averaged over the cell; ignored pixels are left out, and a cell with none left
  is not stored). A fixed number of cells per image and augmentation pass is kept,
  preferring cells whose classes are rare in that image (hbird's ``_sample_features``).
- Query: for each validation cell, its k nearest memory cells by cosine similarity; the
  prediction is softmax(similarity / temperature) over the k weights applied to their label
  distributions (hbird's ``_cross_attention``); the class distributions are upsampled
  bilinearly to the image (``SegmentationReadout.forward``) and the argmax is the class.

The head is registered like the trained heads and reads the same feature map as the
linear readout (dilated res5 at output stride 8, or a PooDLe decoder's output), so the two
evaluations see the same features. Search is exact (chunked matrix products), not ScaNN.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.runtime import autocast

from .backbone import ShapeSpec
from .heads import ReadoutHead, register_retrieval_head
from .transforms import IGNORE_INDEX, to_tensor, train_transform

SIMILARITY_CHUNK = 1 << 24  # query x memory similarities computed at once (64 MB float32)


def patch_labels(label: torch.Tensor, size: tuple[int, int], num_classes: int):
    """Class distribution of each feature cell: label [H, W] (255 = ignore) -> ([h*w, K]
    distributions over the cell's labelled pixels, [h*w] bool: the cell has any)."""
    valid = label != IGNORE_INDEX
    onehot = F.one_hot(torch.where(valid, label, 0).long(), num_classes).permute(2, 0, 1)
    onehot = onehot.float() * valid.float()[None]
    mass = F.adaptive_avg_pool2d(onehot[None], size)[0].flatten(1).T  # [h*w, K]
    total = mass.sum(1)
    keep = total > 0
    return mass / total.clamp(min=1e-12)[:, None], keep


def rare_first(dist: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of `count` cells of one image, favouring cells whose classes are rare in it:
    score = sum over the cell's classes of the number of the image's cells holding that
    class, times U(0, 1); the lowest scores are kept (open-hummingbird-eval
    ``_sample_features``). dist: [n, K] cell class distributions."""
    present = dist > 0
    cells_per_class = present.sum(0).float()
    score = (present.float() * cells_per_class).sum(1)
    score = score * torch.rand(score.shape, generator=generator)
    return score.topk(min(count, len(score)), largest=False).indices


@torch.no_grad()
def nearest(queries: torch.Tensor, memory: torch.Tensor, k: int,
            chunk: int = SIMILARITY_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine similarities and indices of L2-normalised queries [Q, C] in memory
    [M, C], exact, in chunks of queries and memory so that no more than `chunk`
    similarities exist at once."""
    k = min(k, memory.shape[0])
    step_m = min(memory.shape[0], max(k, chunk))
    step_q = max(1, chunk // step_m)
    values, indices = [], []
    for q in queries.split(step_q):
        best_v = best_i = None
        for start in range(0, memory.shape[0], step_m):
            sim = q @ memory[start:start + step_m].T
            v, i = sim.topk(min(k, sim.shape[1]), dim=1)
            i = i + start
            if best_v is not None:
                v, j = torch.cat([best_v, v], 1).topk(k, dim=1)
                i = torch.cat([best_i, i], 1).gather(1, j)
            best_v, best_i = v, i
        values.append(best_v)
        indices.append(best_i)
    return torch.cat(values), torch.cat(indices)


@register_retrieval_head("knn")
class KNNHead(ReadoutHead):
    """Hummingbird retrieval as a head: nothing trains; ``fill`` stores the memory bank,
    ``forward`` returns per-cell class distributions at the feature stride."""

    dilation = (False, True, True)  # the linear readout's feature map (FlowE Sec. 4.2)
    uses_decoder = True

    def __init__(self, *, input_shape: dict[str, ShapeSpec], num_classes: int,
                 in_feature: str = "res5", k: int = 30, temperature: float = 0.02):
        super().__init__()
        self.in_feature, self.num_classes = in_feature, num_classes
        self.k, self.temperature = int(k), float(temperature)
        self.channels = input_shape[in_feature].channels
        self.register_buffer("memory", torch.zeros(0, self.channels), persistent=False)
        self.register_buffer("memory_labels", torch.zeros(0, num_classes), persistent=False)

    def fill(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """features [M, C] (normalised here), labels [M, K] class distributions."""
        self.memory = F.normalize(features.float(), dim=1).to(self.memory.device)
        self.memory_labels = labels.float().to(self.memory.device)

    def forward(self, features):
        if not len(self.memory):
            raise RuntimeError("the kNN memory bank is empty: call fill_memory first")
        x = features[self.in_feature].float()
        B, C, h, w = x.shape
        q = F.normalize(x.permute(0, 2, 3, 1).reshape(-1, C), dim=1)
        sim, idx = nearest(q, self.memory, self.k)
        weights = torch.softmax(sim / self.temperature, dim=1)  # [Q, k]
        out = torch.einsum("qk,qkc->qc", weights, self.memory_labels[idx])
        return {"out": out.reshape(B, h, w, self.num_classes).permute(0, 3, 1, 2)}


@torch.no_grad()
def fill_memory(model, dataset, *, memory_size: int, augment_epochs: int, resize, crop,
                flip: bool, seed: int, device, progress: bool = True) -> dict:
    """Fill the kNN head of `model` (a SegmentationReadout) from `dataset`: each of
    `augment_epochs` passes draws every image through the readout's training transform
    (seeded by (seed, pass, image)) and keeps memory_size / (images x passes) cells of it.
    Returns a summary (cells stored, cells per image, feature map size)."""
    device = torch.device(device)
    model.to(device).eval()
    head = model.head
    per_image = max(1, memory_size // max(1, len(dataset) * augment_epochs))
    generator = torch.Generator().manual_seed(seed)
    feats, labels = [], []
    passes = [(e, i) for e in range(augment_epochs) for i in range(len(dataset))]
    grid = None
    for e, i in tqdm(passes, desc="kNN memory", disable=not progress):
        item = dataset[i]
        rng = np.random.default_rng([seed, e, i])
        if crop is None and not resize:
            image, label = to_tensor(item["image"]), torch.from_numpy(item["label"]).long()
        else:
            image, label = train_transform(item["image"], item["label"], rng, resize=resize,
                                           crop=tuple(crop), flip=flip)
        with autocast(device):
            f = model.features(image[None].to(device))[head.in_feature][0].float()
        grid = tuple(f.shape[-2:])
        dist, keep = patch_labels(label, grid, head.num_classes)
        cells = f.flatten(1).T.cpu()[keep]
        dist = dist[keep]
        chosen = rare_first(dist, per_image, generator)
        feats.append(cells[chosen])
        labels.append(dist[chosen])
    head.fill(torch.cat(feats), torch.cat(labels))
    return {"memory": len(head.memory), "per_image": per_image, "passes": augment_epochs,
            "feature_grid": list(grid) if grid else None}
