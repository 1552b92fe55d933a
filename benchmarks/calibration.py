"""The synthetic world's calibration, measured with no SSL method involved (issue 29):

- the colour-only floor: a linear classifier on each pixel's RGB (normalised as every
  readout's input), fitted on the training split's pixels and evaluated by the readout's
  own evaluation (same resolution, metric and class groups). If it comes near Scratch, the
  world's classes are separable by colour in a way real ones are not;
- Scratch / Supervised under the linear readout: 0.26-0.29 on real data (FlowE Table 1-2,
  PooDLe Table 1: Cityscapes 10.0 / 38.7 ... BDD100K 9.7 / 36.7), target [0.2, 0.4].
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

SCRATCH_OVER_SUPERVISED = (0.2, 0.4)
COLOUR_OVER_SCRATCH = 0.8  # our reading of "well below Scratch": at most 80 % of it, and
# more than 2 pooled std below (world 1 measured 0.92 / 0.97, world 2 0.69 / 0.73)
REAL_RATIO = 9.7 / 36.7  # BDD100K linear, Scratch / IN1K-supervised (PooDLe Table 1)


class ColourOnly(nn.Module):
    """Logits [B, K, H, W] from each pixel's normalised RGB [B, 3, H, W] alone."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.linear = nn.Conv2d(3, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.linear(x)}


def sample_pixels(dataset, pixels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `pixels` labelled pixels drawn evenly from every training image: normalised
    RGB [N, 3] and train ids [N]."""
    from readout.metrics import IGNORE_INDEX
    from readout.transforms import to_tensor
    rng = np.random.default_rng(seed)
    per_image = max(1, pixels // max(len(dataset), 1))
    xs, ys = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        image = to_tensor(item["image"])  # [3, H, W] normalised
        label = torch.from_numpy(np.asarray(item["label"], np.int64))
        valid = torch.nonzero(label.reshape(-1) != IGNORE_INDEX).squeeze(1)
        if len(valid) == 0:
            continue
        pick = valid[torch.from_numpy(rng.choice(len(valid), min(per_image, len(valid)),
                                                 replace=False))]
        xs.append(image.reshape(3, -1)[:, pick].T)
        ys.append(label.reshape(-1)[pick])
    if not xs:
        raise ValueError(f"{dataset.root}: no labelled pixels in the training split")
    return torch.cat(xs), torch.cat(ys)


def fit_colour_only(x: torch.Tensor, y: torch.Tensor, num_classes: int, *,
                    steps: int = 200, seed: int = 0) -> ColourOnly:
    """Multinomial logistic regression on RGB (full batch, L-BFGS): the best linear colour
    classifier of these pixels, so the floor is not an artefact of a short schedule."""
    torch.manual_seed(seed)
    model = ColourOnly(num_classes)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=steps,
                            line_search_fn="strong_wolfe")
    weight, bias = model.linear.weight, model.linear.bias

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(x @ weight[:, :, 0, 0].T + bias, y)
        loss.backward()
        return loss

    opt.step(closure)
    return model


def colour_only_readout(resolved: dict, data_root, *, seed: int, work_dir: Path,
                        pixels: int = 200_000, device="cpu", progress: bool = False) -> dict:
    """The colour-only floor of a segmentation suite: metrics as the suite reports them."""
    from readout.datasets import build_dataset
    from .runner import class_group_indices, evaluate_suite
    train_set = build_dataset(resolved["dataset"], data_root, resolved["splits"]["train"])
    eval_set = build_dataset(resolved["dataset"], data_root, resolved["splits"]["eval"])
    work_dir.mkdir(parents=True, exist_ok=True)
    groups = class_group_indices(resolved, train_set, work_dir)
    x, y = sample_pixels(train_set, pixels, seed)
    model = fit_colour_only(x, y, train_set.num_classes, seed=seed)
    metrics = evaluate_suite(model, resolved, eval_set, train_set.num_classes, groups,
                             device=device, progress=progress)
    return {k: v for k, v in metrics.items() if k not in ("IoU", "confusion")}


def calibration(board: list[dict], suites: list[str], by_std: float = 2.0) -> list[dict]:
    """The two targets per linear suite, judged on the study's leaderboard rows."""
    from .study import FLOOR, _cell, _z

    def cell(method, suite):
        found = _cell(board, method, suite, "mIoU")
        return None if found is None else (found[0], _z(found[1]))
    out = []
    lo, hi = SCRATCH_OVER_SUPERVISED
    for suite in suites:
        scratch, sup, colour = (cell(m, suite) for m in ("scratch", "supervised", FLOOR))
        if scratch and sup and sup[0] > 0:
            ratio = scratch[0] / sup[0]
            out.append({"suite": suite, "target": "scratch_over_supervised",
                        "value": ratio, "range": [lo, hi], "met": lo <= ratio <= hi,
                        "text": f"{suite}: Scratch / Supervised mIoU = {scratch[0]:.2f} / "
                                f"{sup[0]:.2f} = {ratio:.2f} (target [{lo}, {hi}]; real "
                                f"BDD100K {REAL_RATIO:.2f})"})
        if scratch and colour:
            pooled = math.sqrt((scratch[1] ** 2 + colour[1] ** 2) / 2)
            gap = scratch[0] - colour[0]
            share = colour[0] / scratch[0] if scratch[0] > 0 else math.inf
            out.append({"suite": suite, "target": "colour_only_below_scratch",
                        "value": gap, "share": share,
                        "met": gap > by_std * pooled and share <= COLOUR_OVER_SCRATCH,
                        "text": f"{suite}: colour-only (linear on RGB) {colour[0]:.2f} vs "
                                f"Scratch {scratch[0]:.2f}±{scratch[1]:.2f}: {gap:+.2f} below, "
                                f"{share:.2f} of it (target: more than {by_std:g} x pooled "
                                f"std {pooled:.2f} below and at most {COLOUR_OVER_SCRATCH:g} "
                                f"of Scratch)"})
    return out
