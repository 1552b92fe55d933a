"""PNG figures written beside local records and leaderboards (matplotlib, no display)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def per_class_bars(names: list[str], values: list[float], metric: str, path, title: str):
    """One bar per class; classes without a value (NaN) are drawn as an empty slot."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(names)), 3.2))
    shown = [0.0 if v is None or math.isnan(v) else v for v in values]
    ax.bar(range(len(names)), shown, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def confusion_matrix(confusion, names: list[str], path, title: str):
    """Rows (ground truth) normalised to 1; rows without pixels stay empty."""
    plt = _pyplot()
    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(4.0, 0.3 * len(names))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def class_colours(num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """[256, 3] uint8 colours: tab20 cycled over classes, black for the ignore index."""
    plt = _pyplot()
    table = np.zeros((256, 3), np.uint8)
    cmap = plt.get_cmap("tab20")
    for c in range(num_classes):
        table[c] = (np.array(cmap(c % 20)[:3]) * 255).astype(np.uint8)
    table[ignore_index] = 0
    return table


def qualitative(image: np.ndarray, label: np.ndarray, pred: np.ndarray, num_classes: int,
                path, title: str):
    """image | ground truth | prediction, side by side (image uint8 [H, W, 3])."""
    plt = _pyplot()
    colours = class_colours(num_classes)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3 * image.shape[0] / image.shape[1] + 0.5))
    for ax, pic, name in zip(axes, (image, colours[label], colours[pred]),
                             ("image", "ground truth", "prediction")):
        ax.imshow(pic)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def leaderboard_chart(labels: list[str], means: list[float], stds: list[float],
                      ours: list[bool], metric: str, path, title: str):
    """Horizontal bars of `metric` per leaderboard row; our rows orange, published grey."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(labels) + 1.2))
    y = np.arange(len(labels))
    ax.barh(y, [0 if math.isnan(m) else m for m in means],
            xerr=[0 if math.isnan(s) else s for s in stds],
            color=["tab:orange" if o else "tab:gray" for o in ours])
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def study_chart(board: list[dict], metrics, labels: list[str], methods: list[str], path,
                title: str):
    """One panel per suite: grouped bars (one per method) for each metric, with the std
    over seeds as error bars."""
    plt = _pyplot()
    suites = list(dict.fromkeys(r["suite"] for r in board))
    fig, axes = plt.subplots(len(suites), 1, figsize=(9, 2.8 * len(suites) + 0.6),
                             squeeze=False)
    width = 0.8 / max(1, len(methods))
    colours = plt.get_cmap("tab10")
    for ax, suite in zip(axes[:, 0], suites):
        rows = {r["method"]: r for r in board if r["suite"] == suite}
        for j, method in enumerate(methods):
            row = rows.get(method)
            if row is None:
                continue
            x = np.arange(len(metrics)) + (j - (len(methods) - 1) / 2) * width
            means = [0 if math.isnan(row[m]) else row[m] for m in metrics]
            stds = [0 if math.isnan(row[f"{m}_std"]) else row[f"{m}_std"] for m in metrics]
            ax.bar(x, means, width, yerr=stds, capsize=2, label=labels[j], color=colours(j))
        ax.set_xticks(np.arange(len(metrics)), metrics, fontsize=8)
        ax.set_ylabel(suite, fontsize=8)
        ax.set_ylim(bottom=0)
    axes[0, 0].legend(fontsize=7, ncol=min(4, len(methods)), loc="upper right")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
