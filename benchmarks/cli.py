"""The `bench` command. Each module in COMMAND_MODULES adds its sub-commands."""
from __future__ import annotations

import argparse
import errno
import importlib
import sys

COMMAND_MODULES = ("benchmarks.commands.data", "benchmarks.commands.readout",
                   "benchmarks.commands.flow", "benchmarks.commands.pretrain",
                   "benchmarks.commands.track", "benchmarks.commands.demo",
                   "benchmarks.commands.study", "benchmarks.commands.sweep")


class UserError(Exception):
    """A problem the user can fix (bad argument, missing data); printed without traceback."""


def build_parser() -> argparse.ArgumentParser:
    from pretrain.cli import OneLineParser
    parser = OneLineParser(
        prog="bench",
        description="flowssl-bench: self-supervised learning from driving video with optical "
                    "flow - synthetic world, dataset tools, pretraining and frozen readouts.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from readout.datasets.base import LayoutError, PairMismatchError
    try:
        return int(args.func(args) or 0)
    except (UserError, LayoutError, PairMismatchError, FileNotFoundError, KeyError,
            ValueError, FloatingPointError) as e:  # a diverged loss: the last good
        # readout checkpoint is kept, the message names the iteration
        if args.debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if "Original Traceback" in message:  # raised in a DataLoader worker: its own line
            message = message.strip().splitlines()[-1].split(": ", 1)[-1]
        print(f"error: {message}", file=sys.stderr)
        return 2
    except OSError as e:
        if args.debug or e.errno not in STORAGE_ERRORS:
            raise
        print(f"error: {e.filename or 'a file'}: {e.strerror}; "
              f"{STORAGE_ERRORS[e.errno]}", file=sys.stderr)
        return 2


# what the user can do about each storage error (read-only folder, no permission, full disk)
STORAGE_ERRORS = {errno.EACCES: "choose a folder you may write (--out) or fix its permissions",
                  errno.EPERM: "choose a folder you may write (--out) or fix its permissions",
                  errno.EROFS: "the file system is read-only: choose another --out",
                  errno.ENOSPC: "the disk is full: free space or choose another --out",
                  errno.EDQUOT: "the disk quota is used up: free space or choose another --out"}


def check_device(name: str | None) -> str:
    """--device: cpu, cuda or cuda:N, and a GPU for cuda (default: cuda when there is one)."""
    import torch
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"--device {name}: use cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible here; use --device cpu")
    return name


if __name__ == "__main__":  # `python -m benchmarks.cli`: the importable module's main, so
    from benchmarks.cli import main as _main  # its error classes are the ones raised
    sys.exit(_main())
