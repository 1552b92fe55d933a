"""`bench demo`: the README's first command, on the embedded synthetic world.

Today it generates the world, checks every loader on it and computes the class
statistics; pretraining, readouts and the leaderboard join as their issues land.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from readout.datasets import build_dataset
from readout.datasets.stats import class_groups, class_statistics, write_stats_csv

from ..cli import UserError
from .data import check_dataset

SEG_DATASETS = ("cityscapes", "bdd100k", "ade20k")


def register(sub) -> None:
    p = sub.add_parser("demo", help="end-to-end run on the synthetic world (no data needed)")
    p.add_argument("--out", default="./demo", help="output folder (default ./demo)")
    p.add_argument("--preset", default="small", choices=("tiny", "small"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)


def _ensure_world(data: Path, preset: str, seed: int) -> dict:
    """Generate the world unless `data` already holds the same preset and seed."""
    from ..synth.export import MANIFEST, write_world
    manifest_path = data / MANIFEST
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if (old.get("preset"), old.get("seed")) == (preset, seed) and old.get("videos"):
            print(f"[demo] reusing synthetic world in {data}")
            return old
        raise UserError(f"{data} holds a different synthetic world "
                        f"(preset={old.get('preset')}, seed={old.get('seed')}); "
                        f"pick another --out or delete it")
    print(f"[demo] generating the {preset} synthetic world in {data} ...")
    return write_world(data, preset=preset, seed=seed)


def cmd_demo(args) -> int:
    t0 = time.perf_counter()
    out = Path(args.out)
    data = out / "data"
    _ensure_world(data, args.preset, args.seed)
    print("[demo] checking every dataset layout")
    problems = sum(check_dataset(name, data) for name in (*SEG_DATASETS, "bdd100k_det"))
    if problems:
        raise UserError(f"{problems} problem(s) in the generated data")
    print("[demo] class statistics (PooDLe App. F groups) of the synthetic train splits")
    for name in SEG_DATASETS:
        ds = build_dataset(name, data, "train")
        stats = class_statistics((ds.load_label(i) for i in range(len(ds))), ds.classes)
        csv = out / "stats" / f"{name}_synthetic_train.csv"
        write_stats_csv(stats, csv)
        groups = class_groups([s for s in stats if s.total_image_pct > 0])
        print(f"  {name:<11} present {sum(s.total_image_pct > 0 for s in stats):>3} classes; "
              f"rare: {', '.join(groups['rare']) or '-'}; small: {len(groups['small'])}  "
              f"-> {csv}")
    print(f"[demo] done in {time.perf_counter() - t0:.1f} s. Everything here is SYNTHETIC.")
    print("[demo] pretraining, readouts, MLflow and the leaderboard join this demo as "
          "their issues land (see README).")
    return 0
