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
    """One bar per class; a class absent from the evaluation images (NaN) is marked
    "absent" above an empty slot, never drawn as 0."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(names)), 3.2))
    absent = [v is None or math.isnan(v) for v in values]
    shown = [0.0 if a else v for v, a in zip(values, absent)]
    ax.bar(range(len(names)), shown, color="tab:blue")
    for i, a in enumerate(absent):
        if a:
            ax.text(i, 2, "absent", rotation=90, ha="center", va="bottom", fontsize=7,
                    color="gray")
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


def class_colours(num_classes: int, palette=None, ignore_index: int = 255) -> np.ndarray:
    """[256, 3] uint8 colours: the dataset's palette (Cityscapes / BDD100K), else distinct
    colours spread over hue; black for the ignore index."""
    import colorsys
    table = np.zeros((256, 3), np.uint8)
    for c in range(num_classes):
        if palette is not None:
            table[c] = palette[c]
        else:  # golden-ratio hues, three brightness levels: 150 ADE20K classes stay apart
            r, g, b = colorsys.hsv_to_rgb((c * 0.618034) % 1.0, 0.65, (1.0, 0.75, 0.5)[c % 3])
            table[c] = (np.array([r, g, b]) * 255).astype(np.uint8)
    table[ignore_index] = 0
    return table


def qualitative(image: np.ndarray, label: np.ndarray, pred: np.ndarray, classes, palette,
                path, title: str):
    """image | ground truth | prediction in the dataset's colours, with a legend of every
    class that appears in either (ignored pixels black); each panel 6 inches wide."""
    plt = _pyplot()
    from matplotlib.patches import Patch
    colours = class_colours(len(classes), palette)
    height = 6 * image.shape[0] / image.shape[1]
    fig, axes = plt.subplots(1, 3, figsize=(18, height + 1.6))
    for ax, pic, name in zip(axes, (image, colours[label], colours[pred]),
                             ("image", "ground truth", "prediction")):
        ax.imshow(pic, interpolation="nearest")
        ax.set_title(name, fontsize=11)
        ax.axis("off")
    shown = sorted(set(np.unique(label).tolist()) | set(np.unique(pred).tolist()))
    handles = [Patch(color=colours[c] / 255, label=classes[c]) for c in shown
               if c < len(classes)]
    if 255 in shown:
        handles.append(Patch(color="black", label="ignored"))
    fig.legend(handles=handles, loc="lower center", ncol=min(8, max(1, len(handles))),
               fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=12)
    fig.subplots_adjust(bottom=0.08 + 0.04 * math.ceil(len(handles) / 8))
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


def matrix_chart(rows: list[str], columns: list[str], values: np.ndarray, ours: list[bool],
                 path, title: str):
    """A heat map of ``values`` [rows, columns] (NaN: no result), each cell written; our
    rows' labels in orange, published rows' in grey."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.3 * len(columns) + 4, 0.35 * len(rows) + 1.4))
    ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    for i in range(len(rows)):
        for j in range(len(columns)):
            if not math.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="white")
    ax.set_xticks(np.arange(len(columns)), columns, fontsize=7, rotation=30, ha="right")
    ax.set_yticks(np.arange(len(rows)), rows, fontsize=7)
    for label, mine in zip(ax.get_yticklabels(), ours):
        label.set_color("tab:orange" if mine else "tab:gray")
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
