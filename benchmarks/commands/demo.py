"""`bench demo`: the README's first command, on the embedded synthetic world.

It generates the world, checks every loader on it, computes the class statistics, then
runs the `tiny` learning study on it (`bench study`: Scratch, Supervised and every method
with its smoke preset, the synthetic readouts of each checkpoint, MLflow, the study's
leaderboard) and writes the MLflow leaderboard of the linear suite. The study is the same
code `bench study` runs, so the demo cannot drift from it. Everything it produces is tagged
synthetic.
"""
from __future__ import annotations

import time
from pathlib import Path

from readout.datasets import build_dataset
from readout.datasets.stats import class_groups, class_statistics, write_stats_csv

from pretrain.cli import at_least

from ..cli import UserError
from .data import check_dataset

SEG_DATASETS = ("cityscapes", "bdd100k", "ade20k")
DEMO_STUDY = "tiny"
DEMO_SUITE = "cityscapes_linear"


def register(sub) -> None:
    p = sub.add_parser("demo", help="end-to-end run on the synthetic world (no data needed)")
    p.add_argument("--out", default="./demo", help="output folder (default ./demo)")
    p.add_argument("--preset", default="small", choices=("tiny", "small"),
                   help="size of the synthetic world (default small)")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else <out>/mlruns)")
    p.set_defaults(func=cmd_demo)


def _bench(*argv) -> None:
    """One step of the demo: the `bench` command itself, in this process."""
    from ..cli import main
    print(f"[demo] $ bench {' '.join(argv)}")
    if main(list(argv)) != 0:
        raise UserError(f"demo step failed: bench {' '.join(argv)}")


def cmd_demo(args) -> int:
    from ..study import Study, load_study
    t0 = time.perf_counter()
    out = Path(args.out)
    spec = load_study(DEMO_STUDY)
    spec["world"] = dict(spec["world"], preset=args.preset, seed=args.seed,
                         parts=["cityscapes", "bdd100k", "videos", "ade20k"])
    study = Study(spec, out, tracking_uri=args.tracking_uri, device="cpu", progress=False)
    study.command = f"bench demo --preset {args.preset} --out {args.out}"
    study.ensure_world()
    _check_and_describe(out, study.data)
    study.run()
    _bench("leaderboard", "--suite", DEMO_SUITE, "--synthetic", "--tracking-uri", study.uri,
           "--out", str(out / "leaderboard.csv"))
    print(f"[demo] done in {time.perf_counter() - t0:.1f} s. Everything here is SYNTHETIC: "
          f"smoke-scale pretraining and readouts on a procedural world, not Cityscapes.")
    print(f"[demo] leaderboards: {out / 'summary' / 'leaderboard.csv'} (mean ± std per "
          f"method), {out / 'leaderboard.csv'} (MLflow, per checkpoint)\n"
          f"[demo] open the MLflow UI:  bench ui --tracking-uri "
          f"{args.tracking_uri or out / 'mlruns'}")
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
