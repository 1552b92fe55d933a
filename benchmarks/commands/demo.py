"""`bench demo`: the README's first command, on the embedded synthetic world.

It generates the world, checks every loader on it, computes the class statistics,
pretrains Scratch / BYOL (crop w/ video) / FlowE / PooDLe with their smoke presets, runs
the synthetic linear suite on each checkpoint, logs everything to MLflow and writes the
leaderboard. Every step is the same `bench` command a user would type (called in-process),
so the demo cannot drift from the CLI. Everything it produces is tagged synthetic.
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
DEMO_METHODS = ("byol_video", "flowe", "poodle")  # + scratch
DEMO_SUITE = "cityscapes_linear"


def register(sub) -> None:
    p = sub.add_parser("demo", help="end-to-end run on the synthetic world (no data needed)")
    p.add_argument("--out", default="./demo", help="output folder (default ./demo)")
    p.add_argument("--preset", default="small", choices=("tiny", "small"),
                   help="size of the synthetic world (default small)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else <out>/mlruns)")
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


def _bench(*argv) -> None:
    """One step of the demo: the `bench` command itself, in this process."""
    from ..cli import main
    print(f"[demo] $ bench {' '.join(argv)}")
    if main(list(argv)) != 0:
        raise UserError(f"demo step failed: bench {' '.join(argv)}")


def cmd_demo(args) -> int:
    import os
    from ..tracking import sqlite_uri
    t0 = time.perf_counter()
    out = Path(args.out)
    data = out / "data"
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(
        out / "mlruns")
    _ensure_world(data, args.preset, args.seed)
    _check_and_describe(out, data)
    ckpts = out / "checkpoints"
    if not (ckpts / "scratch.pth").is_file():  # a new file would be a new checkpoint (sha)
        _bench("checkpoint", "scratch", "--arch", "resnet18", "--seed", str(args.seed),
               "--out", str(ckpts / "scratch.pth"))
    checkpoints = [ckpts / "scratch.pth"]
    for method in DEMO_METHODS:
        _bench("pretrain", "--method", method, "--preset", "smoke", "--videos",
               str(data / "bdd100k" / "videos" / "train"), "--out", str(out / "pretrain" / method),
               "--seed", str(args.seed), "--no-progress", "--tracking-uri", uri)
        checkpoints.append(out / "pretrain" / method / "backbone.pth")
    for ckpt in checkpoints:
        _bench("run", "--suite", DEMO_SUITE, "--checkpoint", str(ckpt), "--data-root",
               str(data), "--scale", "smoke", "--device", "cpu", "--out", str(out / "runs"),
               "--tracking-uri", uri)
    _bench("leaderboard", "--suite", DEMO_SUITE, "--synthetic", "--tracking-uri", uri)
    _bench("leaderboard", "--suite", DEMO_SUITE, "--synthetic", "--tracking-uri", uri,
           "--out", str(out / "leaderboard.csv"))
    print(f"[demo] done in {time.perf_counter() - t0:.1f} s. Everything here is SYNTHETIC: "
          f"smoke-scale pretraining and readouts on a procedural world, not Cityscapes.")
    print(f"[demo] leaderboard: {out / 'leaderboard.csv'}\n"
          f"[demo] open the MLflow UI:  bench ui --tracking-uri {uri}")
    return 0


def _check_and_describe(out: Path, data: Path) -> None:
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
