"""`bench flow precompute | trajectories | info | show`: the compact flow cache, PiCO's
trajectory store and a picture of a pair."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

from pretrain.catalogue import ESTIMATOR_NAMES
from pretrain.cli import at_least

from ..cli import UserError


def register(sub) -> None:
    flow = sub.add_parser("flow", help="optical flow: precompute a cache, inspect it, picture it")
    fsub = flow.add_subparsers(dest="flow_command", required=True, metavar="ACTION")

    p = fsub.add_parser("precompute", help="cache forward + backward flow of video frame pairs")
    _video_args(p)
    p.add_argument("--out", required=True, help="cache folder (re-running resumes it)")
    p.add_argument("--dt", type=at_least(1), nargs="+", default=[15],
                   help="frame steps to cache (default 15 = 0.5 s at 30 fps, FlowE)")
    p.add_argument("--every", type=at_least(1), default=15,
                   help="cache pairs starting every N frames (default 15)")
    p.add_argument("--step", default="1/8",
                   help="quantization step in pixels (default 1/8: error <= 1/16 px per component)")
    p.add_argument("--workers", type=at_least(1), default=1, help="processes over videos")
    p.set_defaults(func=cmd_precompute)

    p = fsub.add_parser("trajectories",
                        help="track points through every video into a trajectory store (PiCO)")
    _video_args(p)
    p.add_argument("--out", required=True, help="store folder (re-running resumes it)")
    p.add_argument("--cache", default=None,
                   help="read the flow from this flow cache (made with --dt S --every S for "
                        "--stride S) instead of estimating it")
    p.add_argument("--points", type=at_least(1), default=1000,
                   help="start points per video, uniform in space and time (default 1000, "
                        "PiCO App. A.1)")
    p.add_argument("--stride", type=at_least(1), default=1,
                   help="track between frames this far apart (default 1: every frame)")
    p.add_argument("--delta-max", type=float, default=32.0,
                   help="stop a point once |w + w_hat|^2 >= this (default 32 px^2); any "
                        "delta up to it can be applied later (PiCO uses 4, Eq. 3)")
    p.add_argument("--seed", type=int, default=0, help="start points' seed")
    p.add_argument("--workers", type=at_least(1), default=1, help="processes over videos")
    p.set_defaults(func=cmd_trajectories)

    p = fsub.add_parser("info", help="a flow cache's size, compression and quantization "
                                     "error, or a trajectory store's size and track lengths")
    p.add_argument("cache", metavar="FOLDER")
    p.add_argument("--delta", type=float, default=4.0,
                   help="trajectory store: Eq. 3's delta for the track lengths (default 4)")
    p.set_defaults(func=cmd_info)

    p = fsub.add_parser("show", help="PNG: frames, flow, consistency mask, warp error")
    _video_args(p)
    p.add_argument("--video", default=None, help="video name (default: the first)")
    p.add_argument("--t", type=at_least(0), default=0, help="first frame index")
    p.add_argument("--dt", type=at_least(1), default=1, help="frame step")
    p.add_argument("--cache", default=None, help="read the flow from this cache instead")
    p.add_argument("--alpha", type=float, nargs=2, default=(0.01, 0.5),
                   metavar=("A1", "A2"), help="consistency thresholds (PixPro-flow Eq. 3)")
    p.add_argument("--out", default="flow.png")
    p.set_defaults(func=cmd_show)


def _video_args(p) -> None:
    p.add_argument("--videos", required=True,
                   help="a video file or a folder of videos / frame folders (searched recursively)")
    p.add_argument("--estimator", default="dis", choices=ESTIMATOR_NAMES,
                   help="dis (CPU default), farneback, raft_small / raft_large (need "
                        "--weights), gt (synthetic world only)")
    p.add_argument("--weights", default=None, help="local RAFT weights file")
    p.add_argument("--release", default=None,
                   help="torchvision RAFT weights release of --weights (default C_T_V1: the "
                        "authors' Chairs+Things weights; the file's sha256 is checked)")
    p.add_argument("--iterations", type=at_least(1), default=None,
                   help="RAFT's recurrent updates (default 12; PooDLe 24)")
    p.add_argument("--backend", default="auto", choices=("auto", "pyav", "opencv"))


def _estimator_kwargs(args) -> dict:
    """The estimator's settings from --release / --iterations, checked by the one
    definition a config's ``flow`` goes through too (``flow_spec``)."""
    from pretrain.flow.estimators import DEFAULT_RAFT_RELEASE, flow_spec, raft_weights_url
    given = {"release": args.release, "iterations": args.iterations}
    spec = {"estimator": args.estimator, **{k: v for k, v in given.items() if v is not None}}
    try:
        flow_spec(spec)
    except ValueError as e:
        text = str(e).replace("release and iterations", "--release and --iterations")
        if text.startswith("iterations:"):
            text = "--" + text
        elif " weights release " in text:
            text = "--release: " + text
        raise UserError(text) from None
    if not args.estimator.startswith("raft"):
        return {}
    release = args.release or DEFAULT_RAFT_RELEASE
    if not args.weights:
        raise UserError(f"{args.estimator} needs --weights PATH: download "
                        f"{raft_weights_url(args.estimator, release)} on a machine with "
                        f"internet (nothing is downloaded at run time)")
    return {"weights": args.weights, "release": release,
            **({"iterations": args.iterations} if args.iterations else {})}


def _source(args):
    from pretrain.data.video import VideoSource
    source = VideoSource(args.videos, backend=args.backend)
    if not len(source):
        raise UserError(f"no videos under {args.videos}")
    return source


def cmd_precompute(args) -> int:
    from pretrain.flow.cache import FlowCache, precompute
    source = _source(args)
    step = float(Fraction(args.step))
    results = precompute(source, args.out, estimator=args.estimator,
                         estimator_kwargs=_estimator_kwargs(args), dts=args.dt,
                         every=args.every, step=step, workers=args.workers)
    _print_videos(results, source, "cached", f"in {args.out}")
    _print_info(FlowCache(args.out).info())
    return 0


def _print_videos(results: dict, source, verb: str, where: str) -> None:
    """What a per-video run did: new and earlier videos, then each skipped video and each
    file that is no video, with why."""
    bad = {k: v for k, v in results.items() if isinstance(v, str) and v.startswith("skipped")}
    before = sum(v == "cached before" for v in results.values())
    ignored = source.ignored
    print(f"{verb} {len(results) - len(bad) - before} new and {before} earlier of "
          f"{len(source)} videos {where}; {len(bad)} skipped"
          + (f", {len(ignored)} not videos" if ignored else ""))
    for name, why in (*bad.items(), *ignored.items()):
        print(f"  {name}: {why}")


def _print_info(info: dict) -> None:
    print(f"estimator {info['estimator']}, Δt {info['dts']} frames, every {info['every']} "
          f"frames, step {info['step']:.4g} px")
    print(f"{info['videos']} videos, {info['pairs']} pairs, {info['bytes'] / 2**20:.2f} MiB "
          f"({info['ratio']:.3f} of float32 = {info['float32_bytes'] / 2**20:.2f} MiB; "
          f"{info['bytes'] / max(info['pairs'], 1) / 1024:.1f} KiB per pair)")
    print(f"quantization: max |error| {info['max_abs_error_px']:.4f} px, mean end-point "
          f"error {info['mean_epe_px']:.4f} px, clipped values {info['clipped_values']}")


def cmd_info(args) -> int:
    from pretrain.flow.cache import FlowCache
    from pretrain.flow.trajectory_store import SPEC
    if (Path(args.cache) / SPEC).is_file():
        _print_store_info(_store(args.cache).info(delta=args.delta))
    else:
        _print_info(FlowCache(args.cache).info())
    return 0


def _store(root):
    from pretrain.flow.trajectory_store import TrajectoryStore
    try:
        return TrajectoryStore(root)
    except ValueError as e:
        raise UserError(str(e)) from None


def cmd_trajectories(args) -> int:
    from pretrain.flow.trajectory_store import build_store
    if args.delta_max <= 0:
        raise UserError(f"--delta-max must be > 0, got {args.delta_max}")
    source = _source(args)
    kwargs = {} if args.cache else {"estimator": args.estimator,
                                    "estimator_kwargs": _estimator_kwargs(args)}
    try:
        results = build_store(source, args.out, cache=args.cache, points=args.points,
                              stride=args.stride, delta_max=args.delta_max, seed=args.seed,
                              workers=args.workers, **kwargs)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    _print_videos(results, source, "tracked", f"into {args.out}")
    _print_store_info(_store(args.out).info())
    return 0


def _print_store_info(info: dict) -> None:
    flow = info["flow"]
    print(f"flow {flow.get('cache', flow['estimator'])} ({flow['estimator']}), stride "
          f"{info['stride']} frames, {info['points']} points per video, seed {info['seed']}, "
          f"delta_max {info['delta_max']:g}")
    print(f"{info['videos']} videos, {info['bytes'] / 2**20:.2f} MiB "
          f"({info['bytes_per_video'] / 1024:.1f} KiB and {info['seconds_per_video']:.2f} s "
          f"per video)")
    stops = ", ".join(f"{k} {v}" for k, v in info["stops"].items())
    print(f"with gamma 0, delta {info['delta']:g}: {info['tracks']} tracks, "
          f"{info['mean_frames']:.1f} frames on average; stored tracks ended: {stops}")


def cmd_show(args) -> int:
    import cv2
    import torch
    from pretrain.flow import get_estimator
    from pretrain.flow.show import flow_panel
    source = _source(args)
    names = [source.name(i) for i in range(len(source))]
    name = args.video or names[0]
    if name not in names:
        raise UserError(f"no video {name!r} under {args.videos}; known: {', '.join(names[:10])}")
    index = names.index(name)
    t1, t2 = args.t, args.t + args.dt
    image1, image2 = source.read(index, [t1, t2])
    if args.cache:
        from pretrain.flow.cache import FlowCache
        fwd, bwd = FlowCache(args.cache).load(name, t1, t2)
    else:
        est = get_estimator(args.estimator, **_estimator_kwargs(args))
        a, b = (torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255
                for x in (image1, image2))
        meta = {"videos": [str(source.items[index])], "frames1": [t1], "frames2": [t2]}
        fwd = est(a, b, **meta)[0]
        bwd = est(b, a, **{**meta, "frames1": [t2], "frames2": [t1]})[0]
    panel = flow_panel(image1, image2, fwd, bwd, alpha1=args.alpha[0], alpha2=args.alpha[1])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(panel["image"], cv2.COLOR_RGB2BGR))
    print(json.dumps({"png": str(args.out), "video": name, "frames": [t1, t2],
                      "trusted_fraction": round(panel["trusted"], 4),
                      "warp_error": round(panel["warp_error"], 2),
                      "no_warp_error": round(panel["no_warp_error"], 2)}))
    return 0
