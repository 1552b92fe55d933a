"""Command line of the pretraining loop: the arguments and the run of ``bench pretrain``
(``python -m pretrain`` and ``torchrun ... -m pretrain`` are that same command)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .catalogue import ESTIMATOR_NAMES, method_names

FLOW_CHOICES = " | ".join((*ESTIMATOR_NAMES, "cache:DIR"))


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line that names the argument (sub-commands inherit it)."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def at_least(lowest: int):
    """An argparse type: a whole number >= `lowest`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"{value} is less than {lowest}")
        return value
    parse.__name__ = f"whole number >= {lowest}"
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, metavar="METHOD",
                   help=f"one of: {', '.join(method_names())}")
    p.add_argument("--videos", required=True,
                   help="a folder of videos / frame folders (searched recursively)")
    p.add_argument("--out", required=True,
                   help="run folder: config.yaml, pretrain_state.pth (resumed on rerun), "
                        "curve.json, backbone.pth")
    p.add_argument("--preset", default="paper",
                   help="a preset of pretrain/configs/<method>.yaml: paper (the published "
                        "recipe, GPU), smoke (ResNet-18, a few CPU steps), study_cpu / "
                        "study_gpu (the learning study's)")
    p.add_argument("--flow", default=None,
                   help=f"{FLOW_CHOICES} (default: the preset's; gt = the synthetic world's "
                        f"exact flow; cache:DIR = a `bench flow precompute` cache)")
    p.add_argument("--flow-weights", default=None, help="local RAFT weights file")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--workers", type=at_least(0), default=0,
                   help="DataLoader processes decoding video")
    p.add_argument("--backend", default="auto", choices=("auto", "pyav", "opencv"))
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="synchronise BatchNorm across processes under torchrun (default: as "
                        "the method's authors do: BYOL, FlowE and PooDLe yes, MoCo v2 no)")
    p.add_argument("--stop-after", type=at_least(1), default=None,
                   help="stop after this many steps (resume later by rerunning)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. schedule.lr=0.05 model.arch=resnet18")


def _flow(value, weights):
    """(estimator, cache) for the config's flow (a name, cache:DIR or a mapping)."""
    from .flow import get_estimator
    from .flow.cache import FlowCache
    from .flow.estimators import flow_spec
    spec = flow_spec(value)
    if "cache" in spec:
        return None, FlowCache(spec["cache"])
    kwargs = {k: spec[k] for k in ("release", "iterations") if k in spec}
    if weights and not spec["estimator"].startswith("raft"):
        raise ValueError(f"--flow-weights is for RAFT; the flow estimator is "
                         f"{spec['estimator']}")
    if weights:  # RAFT without a weights file: its error says which file to get
        kwargs["weights"] = weights
    return get_estimator(spec["estimator"], **kwargs), None


def resolve_run(args):
    """(videos, resolved config) of the command line: the preset, ``--flow`` and overrides,
    validated against the videos. What `run` trains, and what a Slurm submission checks
    before it submits."""
    from .config import apply_overrides, load_preset, resolve
    from .data.video import VideoSource
    config = load_preset(args.method, args.preset)
    if args.flow:
        config = {**config, "flow": args.flow}
    config = apply_overrides(config, args.overrides)
    source = VideoSource(args.videos, backend=args.backend)
    return source, resolve(args.method, config, num_videos=len(source), seed=args.seed)


def run(args, on_export=None) -> int:
    import torch
    import yaml

    from .config import differing_keys
    from .data.samples import make_samples
    from core.runtime import rank_world, start_process_group
    from .methods import get_method_class
    from .train import PretrainSchedule, pretrain

    source, resolved = resolve_run(args)
    device = start_process_group()
    rank, world = rank_world()
    method_cls = get_method_class(args.method)
    estimator = cache = None
    if method_cls.needs_flow:
        estimator, cache = _flow(resolved["flow"], args.flow_weights)
    data = resolved["data"]
    samples = make_samples(method_cls.samples, source, data, seed=args.seed, flow_cache=cache)
    # how the run is executed changes what it computes: a resume must match it too
    sync_bn = method_cls.sync_batchnorm if args.sync_bn is None else args.sync_bn
    resolved["runtime"] = {"world_size": world, "sync_bn": bool(sync_bn and world > 1),
                           "flow_weights": Path(args.flow_weights).name
                           if args.flow_weights and method_cls.needs_flow else None}
    out = Path(args.out)
    saved = out / "config.yaml"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        old = yaml.safe_load(saved.read_text()) if saved.is_file() else None
        if old is not None and old != resolved:
            raise ValueError(f"{out} holds a run with another config ({saved}: "
                             f"{', '.join(differing_keys(old, resolved))} differ); resume with "
                             f"the same settings, or pick another --out")
        saved.write_text(yaml.safe_dump(resolved, sort_keys=False))
    torch.manual_seed(args.seed)
    method = method_cls(**resolved["model"])
    log = print if rank == 0 else (lambda *_: None)
    for deviation in method.deviations():
        log(f"DEVIATION from the paper: {deviation}")
    steps, batch = resolved["schedule"]["steps"], resolved["schedule"]["batch_size"]
    log(f"pretraining {args.method} ({args.preset}) on {len(source)} videos, "
        f"{steps} steps x {batch} {method_cls.samples}, {world} process(es) on {device}; "
        f"flow: {resolved.get('flow', '-')}")
    curve = pretrain(method, samples, PretrainSchedule(**resolved["schedule"]), out_dir=out,
                     device=device, estimator=estimator, config=resolved,
                     stop_after=args.stop_after, workers=args.workers, sync_bn=sync_bn,
                     progress=not args.no_progress, log=log, on_export=on_export)
    if rank == 0:
        (out / "curve.json").write_text(json.dumps(curve))
        done = out / "backbone.pth"
        log(f"loss {curve[0]['loss']:.4f} -> {curve[-1]['loss']:.4f} over "
            f"{len(curve)} steps; " + (f"checkpoint: {done}" if done.is_file() else
                                       "stopped; rerun the same command to resume"))
    return 0
