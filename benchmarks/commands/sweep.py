"""`bench sweep`: checkpoints x suites x seeds as jobs (benchmarks/sweep.py)."""
from __future__ import annotations

from collections import Counter

from pretrain.cli import at_least

from ..suite import suite_names


def register(sub) -> None:
    p = sub.add_parser(
        "sweep", help="read out checkpoints x suites x seeds as Slurm job arrays (submitit) "
                      "or local jobs",
        description="One job per (checkpoint, suite, seed) without a finished record, each "
                    "`bench run` for its cell: same record folder, lock and MLflow run. On "
                    "Slurm the jobs are one job array; a pre-empted or timed-out job is "
                    "requeued and resumes from its readout checkpoint. A failed job is "
                    "reported with its log and retried at most once. Running it again "
                    "submits only what is not done.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoints", nargs="+", metavar="PTH", help="backbone checkpoints")
    what.add_argument("--from-pretrain", nargs="+", metavar="DIR",
                      help="pretraining folders: every backbone.pth and "
                           "exports/backbone_step*.pth under them")
    p.add_argument("--suites", nargs="+", required=True, metavar="SUITE",
                   help=f"one or more of: {', '.join(suite_names())}")
    p.add_argument("--seeds", type=at_least(1), default=1, help="seeds 0..N-1 (default 1)")
    p.add_argument("--scale", default=None, help="e.g. 'smoke': the suites' tiny CPU scale")
    p.add_argument("--data-root", default=None,
                   help="folder holding the datasets (default: $BENCH_DATA)")
    p.add_argument("--out", default="runs", help="run folders and .sweep/ (default ./runs)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--num-workers", type=at_least(0), default=0)
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="slurm: one job array through submitit; local: submitit's local "
                        "executor on this machine (default)")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--gpus-per-job", type=at_least(0), default=1)
    p.add_argument("--cpus-per-job", type=at_least(1), default=None)
    p.add_argument("--time", type=at_least(1), default=240, metavar="MIN",
                   help="time limit per job in minutes (default 240); a job that reaches "
                        "it is requeued and resumes")
    p.add_argument("--array-parallelism", type=at_least(1), default=None, metavar="N",
                   help="jobs running at once (default: 64 on Slurm, 1 locally)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the cells to submit and print the sbatch script; submit nothing")
    p.add_argument("--status", action="store_true",
                   help="done / running / queued / failed / pending per cell; submit nothing")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override suite values, e.g. protocol.iterations=1000")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    from ..cli import UserError
    from ..slurm import SlurmUnavailable, sbatch_script
    from ..sweep import (ExecutorOptions, Settings, Sweep, SweepError, checkpoints_from_pretrain,
                         make_executor, run_local)
    try:
        checkpoints = args.checkpoints or checkpoints_from_pretrain(args.from_pretrain)
        settings = Settings(out=args.out, scale=args.scale, overrides=tuple(args.overrides),
                            data_root=args.data_root, device=args.device,
                            tracking_uri=args.tracking_uri, num_workers=args.num_workers)
        sweep = Sweep(checkpoints, args.suites, args.seeds, settings)
    except SweepError as e:
        raise UserError(str(e)) from None
    opts = ExecutorOptions(
        kind=args.executor, partition=args.partition, account=args.account,
        gpus_per_job=args.gpus_per_job, cpus_per_job=args.cpus_per_job, time_min=args.time,
        array_parallelism=args.array_parallelism or (64 if args.executor == "slurm" else 1))
    if args.status:
        return print_status(sweep)
    cells = sweep.to_submit()
    print(f"[sweep] {len(sweep.cells)} cell(s): {len(checkpoints)} checkpoint(s) x "
          f"{len(args.suites)} suite(s) x {args.seeds} seed(s); {len(cells)} to submit")
    if args.dry_run:
        for cell in cells:
            print(f"  {cell}")
        if args.executor == "slurm" and cells:
            print(f"[sweep] the sbatch script submitit writes for these {len(cells)} job(s):")
            print(sbatch_script(sweep.logs / "%j", opts.slurm(), array=len(cells)))
        return 0
    if not cells:
        print("[sweep] nothing to submit")
        return print_status(sweep)
    if args.executor == "slurm":
        try:
            sweep.submit(make_executor(sweep, opts), "slurm", cells)
        except SlurmUnavailable as e:
            raise UserError(str(e)) from None
        print("[sweep] submitted; `bench sweep ... --status` shows their progress, and the "
              "same command again resubmits what fails or ends without a record")
        return 0
    failed = run_local(sweep, opts)
    print_status(sweep)
    if failed:
        raise UserError(f"{len(failed)} cell(s) failed twice; their logs are listed above")
    return 0


def print_status(sweep) -> int:
    states = sweep.statuses()
    for cell, (state, detail) in states.items():
        print(f"  {state:<12} {cell}" + (f"  ({detail})" if detail else ""))
    counts = Counter(state for state, _ in states.values())
    print("[sweep] " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return 0
