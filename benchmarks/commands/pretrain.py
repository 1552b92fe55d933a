"""`bench pretrain`: the pretraining loop (the same parser and run as ``python -m pretrain``),
then the local pretraining record and its MLflow run (experiment ``pretrain``)."""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from pretrain.cli import add_arguments, run


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain FlowE / PooDLe / BYOL variants on videos",
                       description="Pretrain a method on a folder of videos and export a "
                                   "flowssl-backbone/1 checkpoint. Under torchrun every "
                                   "process runs it: torchrun --nproc-per-node N -m pretrain ...")
    add_arguments(p)
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args) -> int:
    t0 = time.perf_counter()
    code = run(args)
    if code or int(os.environ.get("RANK", "0")) != 0:
        return code
    record = write_record(Path(args.out), method=args.method, preset=args.preset,
                          videos=args.videos, seconds=time.perf_counter() - t0)
    if record is not None:
        from ..tracking import PRETRAIN_RECORD, push_record
        push_record(Path(args.out) / PRETRAIN_RECORD, uri=args.tracking_uri)
    return 0


def write_record(out: Path, *, method: str, preset: str, videos, seconds: float) -> dict | None:
    """``pretrain_record.json`` once the schedule is done (the checkpoint exists); a run
    resumed after it finished keeps its first record."""
    from pretrain.checkpoint import atomic_path
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
