"""`bench list`, `bench run` and `bench checkpoint scratch | info`."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from pretrain.cli import at_least

from ..cli import UserError
from ..checkpoint_layouts import (AUTHORS_SOURCES, BASIC_SOURCES, IMPORT_SOURCES, WEIGHTS,
                                  WEIGHTS_HELP)
from ..suite import load_suite, resolve_suite, suite_names


def register(sub) -> None:
    p = sub.add_parser("list", help="the suites: dataset, head, protocol")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="run a readout suite on a backbone checkpoint")
    p.add_argument("--suite", required=True, help=f"one of: {', '.join(suite_names())}")
    p.add_argument("--checkpoint", required=True, help="flowssl-backbone/1 or torchvision .pth")
    p.add_argument("--data-root", default=None, help="folder holding the datasets "
                   "(default: $BENCH_DATA)")
    p.add_argument("--seeds", type=at_least(1), default=1, help="run seeds 0..N-1 (default 1)")
    p.add_argument("--scale", default=None, help="e.g. 'smoke': the suite's tiny CPU scale")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", default="runs", help="run folders go here (default ./runs)")
    p.add_argument("--num-workers", type=at_least(0), default=0)
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out image/label pairs that are missing, unreadable or differ "
                        "in size (listed and counted in the record) instead of stopping")
    p.add_argument("--force", action="store_true",
                   help="run again even if this (checkpoint, suite, seed) already finished; "
                        "the old result is kept as seedN.replaced-<time>")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override suite values, e.g. protocol.iterations=1000")
    p.set_defaults(func=cmd_run)

    ck = sub.add_parser("checkpoint", help="create and inspect backbone checkpoints")
    csub = ck.add_subparsers(dest="checkpoint_command", required=True, metavar="ACTION")
    p = csub.add_parser("scratch", help="a random-init backbone (the 'Scratch' row)")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_scratch)
    p = csub.add_parser("info", help="format, arch, decoder and meta of a checkpoint")
    p.add_argument("path")
    p.set_defaults(func=cmd_info)
    p = csub.add_parser("export", help="write a backbone for detectron2 (.pkl) or mmseg/mmdet")
    p.add_argument("--to", required=True, choices=("detectron2", "mmseg"))
    p.add_argument("path", help="flowssl-backbone/1 or torchvision checkpoint")
    p.add_argument("out")
    p.set_defaults(func=cmd_export)
    p = csub.add_parser("import", help="turn a torchvision / detectron2 .pkl / mmseg "
                        "checkpoint, or a file the authors of PooDLe, FlowE, PixPro, DenseCL, "
                        "BYOL or MoCo v2 released, into flowssl-backbone/1")
    p.add_argument("--from", dest="source", required=True, choices=IMPORT_SOURCES,
                   help="the file's format (README: Importing the authors' checkpoints)")
    p.add_argument("--weights", choices=WEIGHTS, default="online",
                   help=f"for {', '.join(AUTHORS_SOURCES)}: {WEIGHTS_HELP}")
    p.add_argument("path")
    p.add_argument("out")
    p.set_defaults(func=cmd_import)


def cmd_list(args) -> int:
    print(f"{'suite':<24}{'dataset':<13}{'head':<17}{'length':>9}{'batch':>6}{'lr':>7}  "
          f"training images")
    for name in suite_names():
        s = load_suite(name)
        p = s["protocol"]
        if s["task"] == "object_detection":
            length = f"{p['epochs']:g} ep"
            detail = (f"original size, flip={p['flip']}, lr x{p['gamma']:g} at epochs "
                      f"{p['lr_steps']}")
        elif s["task"] == "retrieval_segmentation":
            print(f"{name:<24}{s['dataset']:<13}{s['head']:<17}{'-':>9}{'-':>6}{'-':>7}  "
                  f"k={p['k']}, T={p['temperature']:g}, memory {p['memory_size']:,} cells "
                  f"over {p['augment_epochs']} pass(es), crop {p['crop']} (trains nothing)")
            continue
        else:
            length = f"{p['iterations']} it"
            resize = p["resize"]
            detail = f"crop {p['crop']} from " + (
                f"short side {resize['short_side']}" if "short_side" in resize
                else f"scale {resize['scale']} x {resize['ratio']}")
        tag = " (finetune)" if s.get("finetune") else ""
        print(f"{name:<24}{s['dataset']:<13}{s['head']:<17}{length:>9}"
              f"{p['batch_size']:>6}{p['lr']:>7}  {detail}{tag}")
    return 0


def _fmt(v: float) -> str:
    return "  nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.2f}"


def cmd_run(args) -> int:
    from core.runtime import rank_world, start_process_group
    from readout.backbone import read_checkpoint
    from ..cli import check_device
    resolved = resolve_suite(args.suite, scale=args.scale, overrides=args.overrides)
    device = check_device(args.device)
    read_checkpoint(args.checkpoint)  # a bad file fails here, before any folder is made
    start_process_group()  # no-op unless launched by torchrun with WORLD_SIZE > 1
    records = [run_and_log(resolved, args.checkpoint, seed=seed, data_root=args.data_root,
                           device=device, out=args.out, num_workers=args.num_workers,
                           force=args.force, skip_bad=args.skip_bad,
                           tracking_uri=args.tracking_uri)
               for seed in range(args.seeds)]
    if rank_world()[0] == 0:
        print_records(records)
    return 0


def run_and_log(resolved: dict, checkpoint, *, seed: int, data_root=None, device=None,
                out="runs", num_workers: int = 0, force: bool = False, skip_bad: bool = False,
                tracking_uri: str | None = None) -> dict:
    """One seed of `bench run` (and one job of `bench sweep`): the finished record of this
    key, or the readout run now, then its MLflow run (local record first)."""
    from core.runtime import rank_world
    from ..cli import check_device
    from ..runner import RECORD_NAME, run_or_reuse
    from ..tracking import push_record
    record = run_or_reuse(resolved, checkpoint, data_root_dir=data_root, seed=seed,
                          device=check_device(device), out_dir=out, num_workers=num_workers,
                          force=force, skip_bad=skip_bad)
    if rank_world()[0] == 0 and record["status"] == "finished":
        push_record(Path(record["run_dir"]) / RECORD_NAME, uri=tracking_uri)
    return record


def print_records(records: list[dict]) -> None:
    first = records[0]
    tag = "SYNTHETIC data" if first["synthetic"] else first["dataset"]
    print(f"\n{first['suite']} ({tag}, scale={first['scale']}) "
          f"checkpoint {first['checkpoint_sha256'][:12]}")
    keys = list(first["metrics"])
    print("seed  " + "".join(f"{k:>14}" for k in keys))
    for r in records:
        print(f"{r['seed']:<6}" + "".join(f"{_fmt(r['metrics'][k]):>14}" for k in keys))
    if len(records) > 1:
        row = []
        for k in keys:
            vals = [r["metrics"][k] for r in records if not math.isnan(r["metrics"][k])]
            row.append(f"{statistics.mean(vals):.2f}±{statistics.stdev(vals):.2f}"
                       if len(vals) > 1 else "nan")
        print("mean  " + "".join(f"{v:>14}" for v in row))
    print(f"per-class {first['per_class_metric']} (seed 0; absent: not in the evaluation "
          f"images): " + ", ".join(
              f"{c} {'absent' if v is None or math.isnan(v) else f'{v:.2f}'}"
              for c, v in first["per_class"].items()))
    for r in records:
        if "lr_sweep" in r and len(r["lr_sweep"]["lrs"]) > 1:
            sweep = r["lr_sweep"]
            print(f"seed {r['seed']}: lr {sweep['selected_lr']:g} selected of "
                  f"{', '.join(f'{v:g}' for v in sweep['lrs'])} on "
                  f"{sweep['holdout_images']} held-out training images (held-out mIoU "
                  f"{', '.join(f'{v:.2f}' for v in sweep['holdout_mIoU'])})")
    print(f"records: {', '.join(r['run_dir'] for r in records)}")


def cmd_scratch(args) -> int:
    from readout.backbone import file_sha256, save_checkpoint, scratch_checkpoint
    save_checkpoint(scratch_checkpoint(args.arch, args.seed), args.out)
    print(f"wrote random-init {args.arch} checkpoint {args.out} "
          f"(sha256 {file_sha256(args.out)[:12]})")
    return 0


def cmd_info(args) -> int:
    from readout.backbone import file_sha256, read_checkpoint
    ck = read_checkpoint(args.path)
    n = sum(v.numel() for v in ck["state_dict"].values())
    dec = ck.get("decoder")
    print(f"format   {ck['format']}\narch     {ck['arch']} ({len(ck['state_dict'])} tensors, "
          f"{n / 1e6:.1f} M values)\ndecoder  {dec['kind'] if dec else 'none'}\n"
          f"sha256   {file_sha256(args.path)}")
    for k, v in ck.get("meta", {}).items():
        print(f"meta.{k:<14}{v}")
    return 0


def cmd_export(args) -> int:
    from readout.backbone import read_checkpoint
    from ..convert import EXPORTERS
    print(f"exporting {args.path} to {args.to} {args.out}:")
    EXPORTERS[args.to](read_checkpoint(args.path), args.out)
    if args.to == "detectron2":
        from core.inputs import IMAGENET

        def in_255(values):
            return ", ".join(f"{255 * v:.3f}".rstrip("0").rstrip(".") for v in values)
        print(f"detectron2 config for torchvision-style weights: MODEL.RESNETS.STRIDE_IN_1X1 "
              f"False, INPUT.FORMAT {IMAGENET.channels}, MODEL.PIXEL_MEAN "
              f"[{in_255(IMAGENET.mean)}], MODEL.PIXEL_STD [{in_255(IMAGENET.std)}]")
    print(f"wrote {args.out}")
    return 0


def cmd_import(args) -> int:
    from readout.backbone import file_sha256, save_checkpoint
    from ..convert import IMPORTERS
    weights = {} if args.source in BASIC_SOURCES else {"weights": args.weights}
    if not weights and args.weights != "online":
        raise UserError(f"--weights {args.weights}: {args.source} files hold one set of "
                        f"weights; --weights is for {', '.join(AUTHORS_SOURCES)}")
    print(f"importing {args.source} checkpoint {args.path}"
          + (f" ({args.weights} weights):" if weights else ":"))
    save_checkpoint(IMPORTERS[args.source](args.path, **weights), args.out)
    print(f"wrote {args.out} (sha256 {file_sha256(args.out)[:12]})")
    return 0
