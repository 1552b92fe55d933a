"""`bench pretrain` (also ``python -m pretrain`` and ``torchrun ... -m pretrain``): the
pretraining loop, then, on rank 0, the local pretraining record and its MLflow run
(experiment ``pretrain``)."""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from pretrain.cli import add_arguments, at_least, run


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain FlowE / PooDLe / BYOL variants / MoCo v2 "
                                        "on videos",
                       description="Pretrain a method on a folder of videos and export a "
                                   "flowssl-backbone/1 checkpoint. Under torchrun every "
                                   "process runs it: torchrun --nproc-per-node N -m pretrain ...")
    add_arguments(p)
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)")
    p.add_argument("--eval-every", type=at_least(1), default=None, metavar="N",
                   help="export every N steps and run the training-free kNN readout "
                        "(--eval-suite) on each export: a quality curve during pretraining, "
                        "in <out>/eval_curve.json and the MLflow run")
    p.add_argument("--eval-suite", default="cityscapes_knn",
                   help="a retrieval suite for --eval-every (default cityscapes_knn)")
    p.add_argument("--eval-scale", default=None, help="the eval suite's scale (e.g. smoke)")
    p.add_argument("--eval-data-root", default=None,
                   help="datasets for --eval-every (default: $BENCH_DATA)")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args) -> int:
    t0 = time.perf_counter()
    on_export = None
    if args.eval_every is not None:
        on_export = export_evaluator(args)
    code = run(args, on_export=on_export)
    if code or int(os.environ.get("RANK", "0")) != 0:
        return code
    record = write_record(Path(args.out), method=args.method, preset=args.preset,
                          videos=args.videos, seconds=time.perf_counter() - t0)
    if record is not None:
        from ..tracking import PRETRAIN_RECORD, push_record
        push_record(Path(args.out) / PRETRAIN_RECORD, uri=args.tracking_uri)
    return 0


EVAL_METRICS = ("mIoU", "Acc", "mIoU_small", "mIoU_large", "mIoU_rare", "mIoU_common")


def export_evaluator(args):
    """Validate the --eval-* options before any work and return ``on_export(path, step)``:
    the kNN readout of each periodic export, appended to ``<out>/eval_curve.json``."""
    from readout.datasets import build_dataset
    from readout.datasets.base import data_root
    from ..cli import UserError, check_device
    from ..suite import resolve_suite
    resolved = resolve_suite(args.eval_suite, scale=args.eval_scale)
    if resolved["task"] != "retrieval_segmentation":
        raise UserError(f"--eval-suite {args.eval_suite} trains a head; use a kNN suite "
                        f"(cityscapes_knn, bdd_knn, ade20k_knn): it trains nothing")
    root = data_root(args.eval_data_root)
    for split in resolved["splits"].values():  # the layout is checked before any work
        build_dataset(resolved["dataset"], root, split)
    if not any(o.startswith("schedule.export_every=") for o in args.overrides):
        args.overrides = [*args.overrides, f"schedule.export_every={args.eval_every}"]
    out = Path(args.out)

    def on_export(path: Path, step: int) -> None:
        from ..runner import run_or_reuse
        record = run_or_reuse(resolved, path, seed=0, out_dir=out / "evals",
                              data_root_dir=root, device=check_device(None),
                              progress=False, log=lambda *_: None)
        from ..tracking import EVAL_CURVE
        curve_path = out / EVAL_CURVE
        curve = json.loads(curve_path.read_text()) if curve_path.is_file() else []
        curve = [c for c in curve if c["step"] != step]
        curve.append({"step": step, "suite": resolved["name"],
                      **{k: record["metrics"][k] for k in EVAL_METRICS
                         if k in record["metrics"]}})
        curve_path.write_text(json.dumps(sorted(curve, key=lambda c: c["step"]), indent=1))
        print(f"[eval] step {step}: {resolved['name']} mIoU {record['metrics']['mIoU']:.2f} "
              f"({'SYNTHETIC' if record['synthetic'] else record['dataset']})")

    return on_export


def write_record(out: Path, *, method: str, preset: str, videos, seconds: float) -> dict | None:
    """``pretrain_record.json`` once the schedule is done (the checkpoint exists); a run
    resumed after it finished keeps its first record."""
    from core.io import atomic_path
    from readout.backbone import file_sha256, read_checkpoint
    from ..runner import is_synthetic
    from ..tracking import PRETRAIN_RECORD
    path, checkpoint = out / PRETRAIN_RECORD, out / "backbone.pth"
    if not checkpoint.is_file():
        return None
    sha = file_sha256(checkpoint)
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("checkpoint_sha256") == sha:
            return old
    curve = json.loads((out / "curve.json").read_text())
    ckpt = read_checkpoint(checkpoint)
    meta = ckpt["meta"]
    rates = [c["pairs_per_s"] for c in curve if "pairs_per_s" in c]
    record = {"kind": "pretrain", "status": "finished", "record_id": uuid.uuid4().hex,
              "method": method, "preset": preset, "videos": str(videos),
              "synthetic": is_synthetic(videos), "checkpoint": str(checkpoint.resolve()),
              "checkpoint_sha256": sha, "arch": ckpt["arch"],
              "epochs": meta.get("epochs"), "steps": len(curve),
              "pairs_per_s": sum(rates) / len(rates) if rates else float("nan"),
              "seconds": round(seconds, 2), "git_sha": meta.get("git_sha", ""),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return record
