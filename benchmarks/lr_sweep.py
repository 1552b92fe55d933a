"""One-pass learning-rate sweep of a frozen-backbone readout (``protocol.lr_sweep``): one
head per learning rate on the same forward (readout.model.HeadSweep), the head with the
best mIoU on a held-out slice of the training split selected, never on the evaluation
split (DINOv2 Sec. 7's linear evaluation trains its grid in one pass; it selects on val)."""
from __future__ import annotations

import math

import numpy as np

HOLDOUT_DEFAULT = 0.1
HOLDOUT_STREAM = 0x1A5  # the held-out images' own random stream, apart from the batches'


def sweep_split(indices: list[int], lrs, holdout: float, seed: int
                ) -> tuple[list[int], list[int]]:
    """(training images, held-out images). One learning rate has nothing to choose: no
    image is held out, so the run is the plain run."""
    if len(lrs) < 2:
        return list(indices), []
    return hold_out(indices, holdout, seed, HOLDOUT_STREAM, "lr_sweep")


def hold_out(indices: list[int], fraction: float, seed: int, stream: int, what: str
             ) -> tuple[list[int], list[int]]:
    """(kept images, held-out images): round(fraction x n), at least one, drawn from the
    random stream (seed, stream); `what` names the setting in the error."""
    n = max(1, round(fraction * len(indices)))
    if n >= len(indices):
        raise ValueError(f"{what}: {len(indices)} training image(s) cannot spare "
                         f"{n} for choosing the learning rate")
    rng = np.random.default_rng([seed, stream])
    held = sorted(int(i) for i in rng.choice(indices, size=n, replace=False))
    keep = set(held)
    return [i for i in indices if i not in keep], held


def select_head(model, evaluate_fn, train_set, eval_set, held: list[int], lrs, *, device,
                progress: bool) -> dict:
    """Score every head on the held-out images, make the best the model's active head, and
    score the others on the evaluation split too (the record keeps every head's score;
    the caller evaluates the selected one). Returns the sweep's record entry."""
    from torch.utils.data import Subset
    sweep = model.head
    info = {"lrs": list(lrs), "holdout_images": len(held)}
    if len(lrs) == 1:
        sweep.active = 0
        return {**info, "selected_lr": lrs[0], "selected_head": 0}
    scores = []
    for k in range(len(lrs)):
        sweep.active = k
        score = evaluate_fn(model, Subset(train_set, held), device, False)[0]["mIoU"]
        scores.append(score)
    best = max(range(len(lrs)), key=lambda k: (_finite(scores[k]), -k))
    val = []
    for k in range(len(lrs)):
        if k != best:
            sweep.active = k
            val.append(evaluate_fn(model, eval_set, device, progress)[0]["mIoU"])
        else:
            val.append(None)  # filled by the caller's evaluation of the selected head
    sweep.active = best
    return {**info, "holdout_mIoU": scores, "val_mIoU": val, "selected_lr": lrs[best],
            "selected_head": best}


def _finite(v) -> float:
    return v if v is not None and math.isfinite(v) else -math.inf
