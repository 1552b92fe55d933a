"""`bench sync`, `bench leaderboard`, `bench table` and `bench ui`: results in MLflow."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from pretrain.cli import at_least

from ..cli import UserError
from ..suite import load_suite, suite_names
from ..synth.world import DEFAULT_VERSION as DEFAULT_WORLD
from ..synth.world import VERSIONS as WORLD_VERSIONS

URI_HELP = "MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)"


def register(sub) -> None:
    p = sub.add_parser("sync", help="push every local record MLflow has not got yet")
    p.add_argument("folders", nargs="*", default=["runs"],
                   help="folders holding run records (default: runs)")
    p.add_argument("--tracking-uri", default=None, help=URI_HELP)
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("leaderboard", help="one row per checkpoint for a suite, or (--matrix) "
                                           "per checkpoint x suite, from MLflow")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--suite", help=f"one of: {', '.join(suite_names())}")
    which.add_argument("--matrix", action="store_true",
                       help="the methods x suites table: one row per checkpoint, one column "
                            "per suite, mean ± std over seeds")
    p.add_argument("--suites", nargs="+", default=None, metavar="SUITE",
                   help="--matrix columns (default: every suite with results)")
    p.add_argument("--metric", default=None,
                   help="--matrix cell metric, e.g. mIoU, mIoU_small, mAP (default: each "
                        "suite's main metric)")
    p.add_argument("--published", action="store_true",
                   help="add the papers' rows (results/published/results.csv)")
    p.add_argument("--synthetic", action="store_true",
                   help="the synthetic-world results of the suite (never beside published)")
    p.add_argument("--world", type=int, default=None, choices=sorted(WORLD_VERSIONS),
                   help=f"with --synthetic: which world version (default "
                        f"{DEFAULT_WORLD}; results of two worlds never mix)")
    p.add_argument("--per-class", action="store_true", help="add per-class columns")
    p.add_argument("--format", choices=("csv", "md", "text"), default=None,
                   help="default: text on screen, csv for --out FILE.csv, md for FILE.md")
    p.add_argument("--out", default=None, help="write here (a chart PNG is written beside)")
    p.add_argument("--tracking-uri", default=None, help=URI_HELP)
    p.set_defaults(func=cmd_leaderboard)

    from ..leaderboard import table_names
    p = sub.add_parser("table", help="a paper table's layout, our results where we have them")
    p.add_argument("name", help=f"one of: {', '.join(table_names())}")
    p.add_argument("--no-ours", action="store_true", help="published values only")
    p.add_argument("--format", choices=("csv", "md", "text"), default=None)
    p.add_argument("--out", default=None, help="write here (a chart PNG is written beside)")
    p.add_argument("--tracking-uri", default=None, help=URI_HELP)
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for the configured store")
    p.add_argument("--tracking-uri", default=None, help=URI_HELP)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=at_least(1), default=5000)
    p.add_argument("--print-command", action="store_true",
                   help="print the server command instead of starting it")
    p.set_defaults(func=cmd_ui)


def cmd_sync(args) -> int:
    from ..tracking import store_uri, sync
    missing = [f for f in args.folders if not Path(f).is_dir()]
    if missing:
        raise UserError(f"no such folder(s): {', '.join(missing)}")
    counts = sync(args.folders, uri=args.tracking_uri)
    print(f"[sync] {store_uri(args.tracking_uri)}: {counts['synced']} pushed, "
          f"{counts['already']} already there, {counts['failed']} failed")
    return 1 if counts["failed"] else 0


def _output(header, body, fmt, out, chart_fn) -> None:
    from ..leaderboard import render
    fmt = fmt or ("md" if out and out.endswith(".md") else "csv" if out else "text")
    text = render(header, body, fmt)
    if not out:
        print(text, end="")
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    png = chart_fn(path.with_suffix(".png"))
    print(f"wrote {path}" + (f" and {png}" if png else "") + f" ({len(body)} rows)")


def _tracker(uri):
    from ..tracking import Tracker, TrackingUnavailable
    try:
        return Tracker(uri)
    except TrackingUnavailable as e:
        raise UserError(str(e)) from None


def cmd_leaderboard(args) -> int:
    from ..leaderboard import chart, leaderboard, metric_columns, to_table
    if args.matrix:
        return _matrix(args)
    if args.suites or args.metric:
        raise UserError("--suites and --metric are for --matrix")
    if args.suite not in suite_names():
        raise UserError(f"unknown suite {args.suite!r}; known: {', '.join(suite_names())}")
    tracker = _tracker(args.tracking_uri)
    if args.world is not None and not args.synthetic:
        raise UserError("--world picks a synthetic world: add --synthetic")
    rows = leaderboard(args.suite, tracker, published=args.published,
                       synthetic=args.synthetic, world=args.world)
    if not rows:
        hint = "run `bench run --suite ...` first"
        if not args.synthetic and tracker.parent_runs(args.suite, True):
            hint = ("results on the SYNTHETIC world exist (e.g. from `bench demo`): add "
                    "--synthetic to see them")
        print(f"no results for {args.suite}" + (" (synthetic)" if args.synthetic else
                                                 " on real data") + f" yet: {hint}")
        return 0
    from readout.datasets import get_dataset_class
    classes = get_dataset_class(load_suite(args.suite)["dataset"]).classes
    header, body = to_table(rows, per_class=args.per_class, classes=classes)
    main = (metric_columns(rows) or ["mIoU"])[0]
    title = f"{args.suite}" + (f" - SYNTHETIC world {args.world or DEFAULT_WORLD}"
                               if args.synthetic else "")
    _output(header, body, args.format, args.out, lambda png: chart(rows, main, png, title))
    return 0


def _matrix(args) -> int:
    from ..leaderboard import matrix, matrix_chart, matrix_table
    if args.per_class:
        raise UserError("--per-class is for one suite (--suite), not --matrix")
    unknown = sorted(set(args.suites or ()) - set(suite_names()))
    if unknown:
        raise UserError(f"--suites {', '.join(unknown)}: unknown; known: "
                        f"{', '.join(suite_names())}")
    if args.world is not None and not args.synthetic:
        raise UserError("--world picks a synthetic world: add --synthetic")
    columns, rows = matrix(_tracker(args.tracking_uri), args.suites, args.metric,
                           published=args.published, synthetic=args.synthetic,
                           world=args.world)
    if not rows:
        print("no results" + (" (synthetic)" if args.synthetic else " on real data")
              + " for these suites yet: run `bench run` or `bench sweep` first"
              + ("" if args.synthetic else " (add --synthetic for the synthetic world's)"))
        return 0
    header, body = matrix_table(columns, rows)
    title = f"{args.metric or 'main metric'} per checkpoint and suite" + (
        " - SYNTHETIC world" if args.synthetic else "")
    _output(header, body, args.format, args.out,
            lambda png: matrix_chart(columns, rows, png, title))
    return 0


def cmd_table(args) -> int:
    from ..leaderboard import chart, paper_table, table_body
    tracker = None if args.no_ours else _tracker(args.tracking_uri)
    spec, rows = paper_table(args.name, tracker)
    header, body = table_body(spec, rows)
    if not args.out:
        print(spec["title"])
    first = spec["columns"][0]["label"]
    _output(header, body, args.format, args.out,
            lambda png: chart(rows, first, png, spec["title"]))
    ours = sum(c.ours for r in rows for c in r.cells.values())
    print(f"{ours} cell(s) from our runs (real data only), the rest as published")
    return 0


def cmd_ui(args) -> int:
    """The MLflow server in its own process group: Ctrl-C, a signal or the server's own exit
    stops the whole group (uvicorn, its job runner and workers), never leaving them behind."""
    from ..tracking import server_command, store_uri
    uri = store_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"the tracking store is a server already: open {uri}")
        return 0
    cmd = server_command(uri, args.host, args.port)
    if args.print_command:
        print(" ".join(cmd))
        return 0
    check_port_free(args.host, args.port)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    server = subprocess.Popen(cmd, start_new_session=True)
    try:
        print(f"MLflow UI for {uri}\n  open http://{args.host}:{args.port}  (Ctrl-C stops "
              f"it)")
        code = server.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        stop_group(server)
        signal.signal(signal.SIGTERM, previous)
    if code:
        raise UserError(f"the MLflow server stopped with exit code {code} (its messages are "
                        f"above); check --tracking-uri {uri} and --port {args.port}")
    return 0


def _interrupt(*_):
    raise KeyboardInterrupt


def check_port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise UserError(f"port {port} on {host} is in use (another bench ui or server?); "
                            f"stop it or pick another --port") from None


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the process group of `proc` (its own session), SIGKILL after `grace` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break  # the whole group is gone
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; members of its group may live on
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
