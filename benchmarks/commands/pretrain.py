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


# the Slurm launcher's options and their defaults (3 days: PooDLe's runs are multi-day)
SLURM_DEFAULTS = {"nodes": 1, "gpus_per_node": 1, "cpus_per_task": None, "partition": None,
                  "account": None, "time": 4320, "dry_run": False}


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
    slurm = p.add_argument_group(
        "Slurm", "run it as one multi-node DDP job through submitit instead of here: one task "
                 "per GPU, rank / world size / master address from the job; a pre-empted or "
                 "timed-out job is requeued and resumes from its run state")
    slurm.add_argument("--executor", choices=("slurm",), default=None,
                       help="slurm: submit the run (default: run it in this process)")
    slurm.add_argument("--nodes", type=at_least(1), default=SLURM_DEFAULTS["nodes"])
    slurm.add_argument("--gpus-per-node", type=at_least(1),
                       default=SLURM_DEFAULTS["gpus_per_node"])
    slurm.add_argument("--cpus-per-task", type=at_least(1), default=None)
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--account", default=None)
    slurm.add_argument("--time", type=at_least(1), default=SLURM_DEFAULTS["time"], metavar="MIN",
                       help="time limit in minutes (default 3 days); at the limit the job "
                            "is requeued and resumes")
    slurm.add_argument("--dry-run", action="store_true",
                       help="print the sbatch script submitit would submit; submit nothing")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args) -> int:
    if args.executor == "slurm":
        return submit_pretraining(args)
    given = [k for k, v in SLURM_DEFAULTS.items() if getattr(args, k) != v]
    if given:
        from ..cli import UserError
        raise UserError(f"--{given[0].replace('_', '-')} is for --executor slurm")
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


class PretrainJob:
    """The run, in each task of a submitit job: the distributed environment from the job,
    then `bench pretrain` as given (without ``--executor``). On pre-emption or a timeout
    submitit calls ``checkpoint``: the same run is requeued and resumes from its state."""

    def __call__(self, args) -> int:
        from ..slurm import export_distributed_environment
        export_distributed_environment()
        code = cmd_pretrain(args)
        if code:
            raise RuntimeError(f"bench pretrain exited with {code}")
        return code

    def checkpoint(self, args):
        import submitit
        return submitit.helpers.DelayedSubmission(self, args)


def submit_pretraining(args) -> int:
    """Validate the run here, then submit it (or print its sbatch script)."""
    import argparse
    from pretrain.cli import resolve_run
    from pretrain.methods import get_method_class
    from ..cli import UserError
    from ..slurm import SlurmOptions, SlurmUnavailable, sbatch_script, slurm_executor
    get_method_class(args.method)
    source, resolved = resolve_run(args)  # a bad preset, key or video folder fails here
    if args.eval_every is not None:
        export_evaluator(args)
    world = args.nodes * args.gpus_per_node
    batch = resolved["schedule"]["batch_size"]
    if batch % world:
        raise UserError(f"schedule.batch_size {batch} is not divisible by {world} GPUs "
                        f"(--nodes x --gpus-per-node)")
    options = SlurmOptions(job_name=f"bench-pretrain-{args.method}", time_min=args.time,
                           partition=args.partition, account=args.account, nodes=args.nodes,
                           tasks_per_node=args.gpus_per_node, gpus_per_node=args.gpus_per_node,
                           cpus_per_task=args.cpus_per_task)
    folder = Path(args.out) / ".slurm" / "%j"
    print(f"[slurm] {args.method} ({args.preset}) on {len(source)} videos: {args.nodes} "
          f"node(s) x {args.gpus_per_node} GPU(s), {resolved['schedule']['steps']} steps of "
          f"{batch}")
    if args.dry_run:
        print(sbatch_script(folder, options))
        return 0
    try:
        executor = slurm_executor(folder, options)
    except SlurmUnavailable as e:
        raise UserError(str(e)) from None
    job_args = argparse.Namespace(**{**vars(args), "executor": None, **SLURM_DEFAULTS})
    job = executor.submit(PretrainJob(), job_args)
    print(f"[slurm] submitted job {job.job_id}; log {job.paths.stdout}; the run writes "
          f"{args.out} (rerun the same command to resume it here or submit it again)")
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
    from ..runner import world_version
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
    world = world_version(videos)
    record = {"kind": "pretrain", "status": "finished", "record_id": uuid.uuid4().hex,
              "method": method, "preset": preset, "videos": str(videos),
              "synthetic": world is not None, "world": world,
              "checkpoint": str(checkpoint.resolve()),
              "checkpoint_sha256": sha, "arch": ckpt["arch"],
              "epochs": meta.get("epochs"), "steps": len(curve),
              "pairs_per_s": sum(rates) / len(rates) if rates else float("nan"),
              "seconds": round(seconds, 2), "git_sha": meta.get("git_sha", ""),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return record
