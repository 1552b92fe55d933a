"""Leaderboards and paper tables: our MLflow parent runs beside the papers' numbers.

Our rows come from MLflow (the parent run of each checkpoint x suite: mean and std over
seeds); the published rows come from ``results/published/results.csv`` (copied verbatim
from the shared transcription). Synthetic-world results are never put beside published
numbers: a synthetic leaderboard has no published rows and paper tables use real runs only.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pretrain.catalogue import method_label as catalogue_label

from .suite import load_suite

RESULTS = Path(__file__).resolve().parents[1] / "results"
PUBLISHED_CSV = RESULTS / "published" / "results.csv"
TABLE_DIR = Path(__file__).with_name("tables")
METRIC_ORDER = ("mIoU", "Acc", "mAcc", "mIoU_small", "mIoU_large", "mIoU_rare", "mIoU_common",
                "mAP", "AP50", "AP75", "APs", "APm", "APl")
# the rows that are no pretraining method; a method's label is in its YAML (pretrain.catalogue)
BOUND_LABELS = {"scratch": "Scratch", "torchvision": "Supervised",
                "supervised": "Supervised (world labels)",
                "colour_only": "Colour only (linear on RGB)"}


def method_label(method: str) -> str:
    return BOUND_LABELS.get(method) or catalogue_label(method)


ARCH_LABELS = {"resnet50": "R50", "resnet18": "R18", "resnet34": "R34", "resnet101": "R101"}
ROW_KEY = ("method", "arch", "pretrain_epochs", "pretrain_data", "init")


@dataclass
class Cell:
    mean: float
    std: float = math.nan
    text: str = ""
    ours: bool = False
    seeds: int = 0

    def __str__(self) -> str:
        return self.text


@dataclass
class Row:
    source: str
    method: str
    arch: str
    epochs: str = ""
    pretrain_data: str = ""
    init: str = ""
    setting: str = ""  # what tells apart rows of a paper table keyed by the note (ablations)
    seeds: str = ""
    checkpoint: str = ""
    cells: dict[str, Cell] = field(default_factory=dict)

    @property
    def ours(self) -> bool:
        return self.source.startswith("ours")


def load_published(path=PUBLISHED_CSV) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def suite_filter(suite: dict) -> dict:
    """The published rows a suite reproduces: dataset, head and protocol of the readout."""
    return {"eval_dataset": suite["dataset"].removesuffix("_det"), "head": suite["head"],
            "protocol": "finetune" if suite.get("finetune") else "frozen"}


def _matches(row: dict, where: dict) -> bool:
    """`where` values are a string or a list of accepted strings."""
    return all(row[k] in v if isinstance(v, list) else row[k] == v for k, v in where.items())


def ours_cell(metrics: dict, name: str, seeds: int) -> Cell | None:
    mean = metrics.get(name)
    if mean is None or not math.isfinite(mean):
        return None
    std = metrics.get(f"{name}_std", math.nan)
    text = f"{mean:.2f}" + (f" ± {std:.2f}" if seeds > 1 else "")
    return Cell(mean, std, text, ours=True, seeds=seeds)


def published_cell(value: str) -> Cell:
    return Cell(float(value), text=value)


def our_rows(tracker, suite: str, synthetic: bool, world: int | None = None) -> list[Row]:
    """Our parent runs of a suite: real data, or one synthetic world (default: the current
    version), never two worlds in one list."""
    if synthetic and world is None:
        from .synth.world import DEFAULT_VERSION
        world = DEFAULT_VERSION
    rows = []
    for run in tracker.parent_runs(suite, synthetic, world):
        tags, metrics = run["tags"], run["metrics"]
        seeds = int(metrics.get("seeds", 0))
        row = Row(source=f"ours (SYNTHETIC world {world})" if synthetic else "ours",
                  method=method_label(tags.get("method", "")) or "?",
                  arch=ARCH_LABELS.get(tags.get("arch", ""), tags.get("arch", "")),
                  epochs=tags.get("epochs", ""), pretrain_data=data_label(
                      tags.get("pretrain_data", ""), synthetic),
                  seeds=str(seeds), checkpoint=tags.get("checkpoint_sha256", "")[:12])
        for name in metrics:
            if not name.endswith("_std") and name not in ("seeds", "train_seconds",
                                                          "selected_lr"):
                cell = ours_cell(metrics, name, seeds)
                if cell:
                    row.cells[name] = cell
        rows.append(row)
    return sorted(rows, key=lambda r: (r.method, r.checkpoint))


def data_label(pretrain_data: str, synthetic: bool) -> str:
    """Checkpoint meta holds the video folder; show its last two parts."""
    if not pretrain_data:
        return ""
    label = "/".join(Path(pretrain_data).parts[-2:])
    return f"synthetic:{label}" if synthetic else label


def published_rows(suite: dict, published: list[dict] | None = None) -> list[Row]:
    """The papers' rows for a suite, one per (paper, table, method, arch, epochs, data,
    init); rows that differ only in their note (ablations) stay separate."""
    published = load_published() if published is None else published
    where = suite_filter(suite)
    groups: dict[tuple, list[dict]] = {}
    for r in published:
        if _matches(r, where):
            groups.setdefault((r["paper"], r["table"], *(r[k] for k in ROW_KEY)), []).append(r)
    rows = []
    for key, items in groups.items():
        paper, table, method, arch, epochs, data, init = key
        # rows that differ only in their note (ablations): each value goes to the first
        # sub-row still missing its metric; a sub-row is named by its note's first clause
        parts: list[tuple[str, dict]] = []
        for r in items:
            part = next((p for p in parts if r["metric"] not in p[1]), None)
            if part is None:
                part = (r["note"].split(";")[0], {})
                parts.append(part)
            part[1][r["metric"]] = published_cell(r["value"])
        for note, cells in parts:
            label = method + (f" [{note}]" if len(parts) > 1 else "")
            rows.append(Row(source=f"{paper} {table}", method=label, arch=arch, epochs=epochs,
                            pretrain_data=data, init=init, cells=cells))
    return rows


def leaderboard(suite_name: str, tracker, *, published: bool, synthetic: bool,
                world: int | None = None) -> list[Row]:
    if synthetic and published:
        raise ValueError("synthetic-world results are never put beside the papers' numbers; "
                         "drop --published or --synthetic")
    suite = load_suite(suite_name)
    rows = our_rows(tracker, suite_name, synthetic, world)
    return sort_by_main_metric(rows + (published_rows(suite) if published else []))


def sort_by_main_metric(rows: list[Row]) -> list[Row]:
    """Best first on the leaderboard's main metric (mIoU, or mAP); rows without it last."""
    main = (metric_columns(rows) or ["mIoU"])[0]
    return sorted(rows, key=lambda r: (main not in r.cells,
                                       -r.cells[main].mean if main in r.cells else 0.0))


def metric_columns(rows: list[Row], per_class: bool = False, classes=()) -> list[str]:
    """The summary metrics in METRIC_ORDER, then (with `per_class`) the per-class columns
    in the dataset's class order (``IoU_road`` before ``IoU_sidewalk``)."""
    names = {n for r in rows for n in r.cells}
    ordered = [m for m in METRIC_ORDER if m in names]
    if per_class:
        others = sorted(n for n in names if n not in METRIC_ORDER)
        prefixes = sorted({n.split("_", 1)[0] for n in others})
        # every class gets its column, also one absent from every row's evaluation images
        ordered += [f"{p}_{c}" for p in prefixes for c in classes]
        ordered += [n for n in others if n not in ordered]
    return ordered


FRONT = ("source", "method", "arch", "epochs", "pretrain_data", "init", "seeds", "checkpoint")


def to_table(rows: list[Row], per_class: bool = False,
             classes=()) -> tuple[list[str], list[list[str]]]:
    """Cells as text; a per-class column that one of our rows lacks is a class absent from
    its evaluation images: "absent", never 0."""
    metrics = metric_columns(rows, per_class, classes)
    summary = set(METRIC_ORDER)
    body = [[str(getattr(r, k)) for k in FRONT]
            + [str(r.cells[m]) if m in r.cells else
               ("absent" if r.ours and m not in summary else "") for m in metrics]
            for r in rows]
    return list(FRONT) + metrics, body


def render(header: list[str], body: list[list[str]], fmt: str) -> str:
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(body)
        return buf.getvalue()
    if fmt == "md":
        esc = [[c.replace("|", "\\|") for c in line] for line in [header, *body]]
        lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(line) + " |" for line in esc[1:]]) + "\n"
    if fmt == "text":
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                         for line in [header, *body]) + "\n"
    raise ValueError(f"unknown format {fmt!r}; known: csv, md, text")


def chart(rows: list[Row], metric: str, path, title: str) -> Path | None:
    from . import plots
    shown = [r for r in rows if metric in r.cells]
    if not shown:
        return None
    return plots.leaderboard_chart(
        [f"{r.method} {r.arch} {r.epochs} ({r.source})".replace("  ", " ") for r in shown],
        [r.cells[metric].mean for r in shown], [r.cells[metric].std for r in shown],
        [r.ours for r in shown], metric, path, title)


# ---- the methods x suites matrix ------------------------------------------------------
def main_metric(suite: dict) -> str:
    return "mAP" if suite["task"] == "object_detection" else "mIoU"


def matrix(tracker, suites: list[str], metric: str | None, *, published: bool,
           synthetic: bool, world: int | None = None) -> tuple[list[str], list[Row]]:
    """One row per checkpoint (ours) or paper row, one column per suite: ``metric`` (default:
    each suite's main metric), mean ± std over seeds. Without ``suites``, every suite that
    has our results. Paper rows fill the columns whose readout they report."""
    if synthetic and published:
        raise ValueError("synthetic-world results are never put beside the papers' numbers; "
                         "drop --published or --synthetic")
    from .suite import suite_names
    rows: dict[tuple, Row] = {}
    columns = []
    for name in suites or suite_names():
        suite = load_suite(name)
        wanted = metric or main_metric(suite)
        ours = [r for r in our_rows(tracker, name, synthetic, world) if wanted in r.cells]
        if not ours and not suites:
            continue
        columns.append(name)
        for r in ours + (published_rows(suite) if published else []):
            if wanted in r.cells:
                key = (r.source, r.checkpoint) if r.ours else (
                    r.source, r.method, r.arch, r.epochs, r.pretrain_data, r.init)
                row = rows.setdefault(key, Row(r.source, r.method, r.arch, r.epochs,
                                               r.pretrain_data, r.init, seeds=r.seeds,
                                               checkpoint=r.checkpoint))
                row.cells[name] = r.cells[wanted]
    ordered = sorted(rows.values(), key=lambda r: (not r.ours, r.method, r.source, r.arch,
                                                   r.checkpoint))
    return columns, ordered


def matrix_table(columns: list[str], rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    body = [[str(getattr(r, k)) for k in FRONT] + [str(r.cells.get(c, "")) for c in columns]
            for r in rows]
    return list(FRONT) + columns, body


def matrix_chart(columns: list[str], rows: list[Row], path, title: str) -> Path:
    import numpy as np
    from . import plots
    values = np.array([[r.cells[c].mean if c in r.cells else math.nan for c in columns]
                       for r in rows], dtype=float)
    labels = [f"{r.method} {r.arch} {r.epochs} "
              f"({r.checkpoint or r.source})".replace("  ", " ") for r in rows]
    return plots.matrix_chart(labels, columns, values, [r.ours for r in rows], path, title)


# ---- paper tables ----------------------------------------------------------------------
TABLE_KEYS = {"name", "title", "paper", "table", "columns", "methods", "row_key"}
OPTIONAL_TABLE_KEYS = {"methods", "row_key"}
COLUMN_KEYS = {"label", "metric", "suite", "eval_dataset", "head", "protocol"}


def table_names() -> list[str]:
    return sorted(p.stem for p in TABLE_DIR.glob("*.yaml"))


def load_table(name: str) -> dict:
    path = TABLE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown table {name!r}; known: {', '.join(table_names())}")
    spec = yaml.safe_load(path.read_text())
    unknown = set(spec) - TABLE_KEYS
    if unknown or not TABLE_KEYS - OPTIONAL_TABLE_KEYS <= set(spec):
        raise ValueError(f"{path}: keys must be {sorted(TABLE_KEYS)}; got {sorted(spec)}")
    for col in spec["columns"]:
        bad = set(col) - COLUMN_KEYS
        if bad or not {"label", "metric"} <= set(col):
            raise ValueError(f"{path}: column {col} has unknown keys {sorted(bad)} or lacks "
                             f"label/metric")
        where = suite_filter(load_suite(col["suite"])) if col.get("suite") else {}
        where.update({k: col[k] for k in ("eval_dataset", "head", "protocol") if k in col})
        if col.get("suite") and col.get("head", where["head"]) != load_suite(col["suite"])["head"]:
            raise ValueError(f"{path}: column {col['label']!r} head differs from its suite")
        where.setdefault("protocol", "frozen")
        if set(where) != {"eval_dataset", "head", "protocol"}:
            raise ValueError(f"{path}: column {col['label']!r} needs a suite or eval_dataset "
                             f"and head")
        col["where"] = dict(where, metric=col["metric"])
    return spec


def paper_table(name: str, tracker=None, published: list[dict] | None = None
                ) -> tuple[dict, list[Row]]:
    """The layout of a paper table: its rows in the paper's order and its columns, each
    cell our (real-data) result where we have one, else the published value."""
    spec = load_table(name)
    published = load_published() if published is None else published
    mine = [r for r in published if r["paper"] == spec["paper"] and r["table"] == spec["table"]]
    row_key = spec.get("row_key", ROW_KEY)
    groups: dict[tuple, list[dict]] = {}
    for r in mine:
        groups.setdefault(tuple(_key_field(r, k) for k in row_key), []).append(r)
    rows = []
    for items in groups.values():
        # fields outside the row key (e.g. FlowE's in-domain data) are listed, joined by /
        value = {k: "/".join(dict.fromkeys(r[k] for r in items if r[k])) for k in ROW_KEY}
        rows.append(Row(source=f"{spec['paper']} {spec['table']}", method=value["method"],
                        arch=value["arch"], epochs=value["pretrain_epochs"],
                        pretrain_data=value["pretrain_data"], init=value["init"],
                        setting=next((_key_field(items[0], k) for k in row_key
                                      if k.startswith("note")), "")))
        _place(spec, rows[-1], items)
    if tracker is not None:
        rows += _fill_ours(spec, rows, tracker)
    return spec, rows


def _key_field(row: dict, key: str) -> str:
    """A row-key field of a published row; ``note_clause``: its note's first clause (what
    tells apart a table's ablation variants whose notes go on per column)."""
    return row["note"].split(";")[0] if key == "note_clause" else row[key]


def _place(spec: dict, row: Row, items: list[dict]) -> None:
    for r in items:
        for col in spec["columns"]:
            if _matches(r, col["where"]):
                if col["label"] in row.cells:
                    raise ValueError(f"table {spec['name']}: two published values for "
                                     f"{row.method} / {col['label']}; refine row_key")
                row.cells[col["label"]] = Cell(float(r["value"]), text=f"{r['value']} (paper)")


def _fill_ours(spec: dict, rows: list[Row], tracker) -> list[Row]:
    """Put our real-data results into matching paper rows (same method, arch, and the
    paper's pretraining data named in our video folder); the rest become extra rows."""
    labels = spec.get("methods") or {}
    extra: dict[str, Row] = {}
    for col in spec["columns"]:
        if not col.get("suite"):
            continue
        for run in tracker.parent_runs(col["suite"], synthetic=False):
            tags, metrics = run["tags"], run["metrics"]
            cell = ours_cell(metrics, col["metric"], int(metrics.get("seeds", 0)))
            if cell is None:
                continue
            cell.text += " (ours)"
            name = tags.get("method", "")
            method = labels.get(name) or method_label(name) or "?"
            arch = ARCH_LABELS.get(tags.get("arch", ""), tags.get("arch", ""))
            data = tags.get("pretrain_data", "").lower()
            target = next((r for r in rows if not r.ours and r.method == method
                           and r.arch == arch and (not r.pretrain_data or any(
                               d.lower() in data for d in r.pretrain_data.split("/")))), None)
            if target is None:
                target = extra.setdefault(tags.get("checkpoint_sha256", ""), Row(
                    source="ours", method=method, arch=arch, epochs=tags.get("epochs", ""),
                    pretrain_data=data_label(tags.get("pretrain_data", ""), False),
                    checkpoint=tags.get("checkpoint_sha256", "")[:12]))
            old = target.cells.get(col["label"])
            if old is None or not old.ours or cell.seeds > old.seeds:
                target.cells[col["label"]] = cell
    return list(extra.values())


def table_body(spec: dict, rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    labels = [c["label"] for c in spec["columns"]]
    setting = ["setting"] if any(r.setting for r in rows) else []
    header = ["method", "arch", "epochs", "pretrain_data", "init", *setting, *labels]
    body = [[r.method, r.arch, r.epochs, r.pretrain_data, r.init,
             *([r.setting] if setting else []),
             *(str(r.cells.get(label, "")) for label in labels)] for r in rows]
    return header, body
