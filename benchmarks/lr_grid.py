"""Choosing each method's small-scale learning rate the same way for every method (issue 29):
pretrain with the paper's rate times each factor of a grid, read each checkpoint out with
the training-free kNN readout on a held-out slice of the *training* split (the memory from
the rest of it), keep the best. The evaluation split is never built, so the choice cannot
see it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .lr_sweep import hold_out

HOLDOUT_STREAM = 29  # the held-out slice's random stream, apart from every other draw


class Slice:
    """Some images of a dataset, with its attributes (classes, num_classes, root, ...)."""

    def __init__(self, dataset, indices: list[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        return self.dataset[self.indices[k]]

    def load_label(self, k: int):
        return self.dataset.load_label(self.indices[k])

    def __getattr__(self, name):
        return getattr(self.dataset, name)


def heldout_knn(resolved: dict, checkpoint, data_root, *, holdout: float, seed: int,
                work_dir: Path, device="cpu", progress: bool = False) -> dict:
    """kNN readout of `checkpoint` with memory and queries both from the training split
    (disjoint images): the selection score. Returns the metrics (mIoU, ...)."""
    from readout.backbone import read_checkpoint
    from readout.datasets import build_dataset
    from readout.knn import fill_memory
    from .runner import _segmentation
    if resolved["task"] != "retrieval_segmentation":
        raise ValueError(f"lr_grid.suite: {resolved['name']} is not a kNN readout")
    train = build_dataset(resolved["dataset"], data_root, resolved["splits"]["train"])
    keep, held = hold_out(list(range(len(train))), holdout, seed, HOLDOUT_STREAM,
                          "lr_grid.holdout")
    memory, queries = Slice(train, keep), Slice(train, held)
    work_dir.mkdir(parents=True, exist_ok=True)
    model, evaluate_fn, _, _ = _segmentation(
        resolved, read_checkpoint(checkpoint, log=lambda *_: None), memory, work_dir,
        lambda *_: None)
    p = resolved["protocol"]
    fill_memory(model, memory, memory_size=p["memory_size"],
                augment_epochs=p["augment_epochs"], resize=p["resize"], crop=p["crop"],
                flip=p["flip"], seed=seed, device=device, progress=progress)
    metrics, _, _ = evaluate_fn(model, queries, device, progress)
    return {"mIoU": metrics["mIoU"], "Acc": metrics.get("Acc"), "memory_images": len(keep),
            "heldout_images": len(held)}


def choose(scores: dict[float, float]) -> float:
    """The factor with the best held-out score (ties: the one nearest the paper's, x1)."""
    return max(scores, key=lambda f: (scores[f], -abs(np.log(f))))
