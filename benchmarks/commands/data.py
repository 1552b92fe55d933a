"""`bench data synth | check | stats`."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from readout.datasets import DATASETS, build_dataset, get_dataset_class
from readout.datasets.base import SegmentationDataset
from readout.datasets.stats import class_groups, class_statistics, write_stats_csv
from pretrain.cli import at_least

from ..cli import UserError


def register(sub) -> None:
    data = sub.add_parser("data", help="generate, check and summarise datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    from ..synth import PRESETS
    from ..synth.export import WRITERS
    from ..synth.world import DEFAULT_VERSION, VERSIONS
    p = dsub.add_parser("synth", help="write the synthetic world in the real dataset layouts")
    p.add_argument("--out", required=True, help="output data root")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                   help="tiny (~64x128, seconds), small (~256x512, <2 min), full (720x1280)")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--world-version", type=int, default=DEFAULT_VERSION,
                   choices=sorted(VERSIONS),
                   help="; ".join(f"{v}: {d.split(': ', 1)[1]}" for v, d in VERSIONS.items())
                   + f" (default {DEFAULT_VERSION})")
    p.add_argument("--parts", nargs="+", default=list(WRITERS), choices=list(WRITERS),
                   help="which layouts to write (default: all)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_synth)

    names = sorted(DATASETS)
    p = dsub.add_parser("check", help="validate a dataset folder; print counts and problems")
    p.add_argument("--dataset", required=True, choices=names)
    p.add_argument("--root", default=None,
                   help="dataset folder or the data root holding it (default: $BENCH_DATA)")
    p.add_argument("--splits", nargs="+", default=None, help="default: train val")
    p.add_argument("--skip-bad", action="store_true",
                   help="count bad pairs as skipped instead of failing")
    p.set_defaults(func=cmd_check)

    p = dsub.add_parser("stats", help="per-class pixel statistics and PooDLe App. F groups")
    p.add_argument("--dataset", required=True,
                   choices=[n for n in names if issubclass(DATASETS[n], SegmentationDataset)])
    p.add_argument("--root", default=None, help="default: $BENCH_DATA")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help="CSV to write")
    p.add_argument("--skip-bad", action="store_true")
    p.set_defaults(func=cmd_stats)


def cmd_synth(args) -> int:
    from ..synth.export import write_world
    manifest = write_world(args.out, preset=args.preset, seed=args.seed, parts=args.parts,
                           progress=not args.no_progress, version=args.world_version)
    total = sum(manifest["seconds"].values())
    print(f"synthetic world {manifest['world_version']} (preset={args.preset}, "
          f"seed={args.seed}) written to {args.out} in {total:.1f} s")
    for part, n in manifest["counts"].items():
        print(f"  {part:<11} {n:>5} items  {manifest['seconds'][part]:7.1f} s")
    print("every file here is SYNTHETIC: results on it are tagged synthetic, never real.")
    return 0


def check_dataset(name: str, root, splits=None, skip_bad: bool = False, out=None) -> int:
    """Print per-split counts and every problem; returns the number of problems."""
    out = out or sys.stdout
    cls = get_dataset_class(name)
    splits = splits or [s for s in ("train", "val") if s in cls.splits]
    n_problems = 0
    for split in splits:
        ds = build_dataset(name, root, split, skip_bad=True, check="decode",  # every problem
                           progress=out.isatty() if hasattr(out, "isatty") else False)
        problems = ds.skipped
        n_problems += len(problems)
        verdict = "skipped" if skip_bad else "problems"
        print(f"{name} {split}: {len(ds)} ok, {len(problems)} {verdict}  ({ds.root})",
              file=out)
        for p in problems:
            print(f"  {p}", file=out)
    return n_problems


def cmd_check(args) -> int:
    n = check_dataset(args.dataset, args.root, args.splits, args.skip_bad)
    if n and not args.skip_bad:
        print(f"{n} problem(s) found; rerun with --skip-bad to train with them skipped",
              file=sys.stderr)
        return 1
    return 0


def cmd_stats(args) -> int:
    ds = build_dataset(args.dataset, args.root, args.split, skip_bad=args.skip_bad)
    if len(ds) == 0:
        raise UserError(f"{args.dataset} {args.split} under {ds.root} has no samples")
    from tqdm import tqdm
    labels = (ds.load_label(i) for i in tqdm(range(len(ds)), desc="labels",
                                            disable=not sys.stderr.isatty()))
    stats = class_statistics(labels, ds.classes)
    write_stats_csv(stats, args.out)
    print(f"{'class':<16}{'avg %/img':>10}{'total %':>9}{'images %':>9}  size freq")
    for s in sorted(stats, key=lambda s: -s.avg_pixel_pct_per_image):
        print(f"{s.name:<16}{s.avg_pixel_pct_per_image:>10.2f}{s.total_pixel_pct:>9.2f}"
              f"{s.total_image_pct:>9.1f}  {s.size_group:>4} {s.freq_group:>4}")
    groups = class_groups(stats)
    print("  ".join(f"{g}: {len(v)}" for g, v in groups.items()))
    print(f"wrote {os.fspath(Path(args.out))}")
    return 0
