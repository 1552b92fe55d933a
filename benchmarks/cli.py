"""The `bench` command. Each module in COMMAND_MODULES adds its sub-commands."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("benchmarks.commands.data", "benchmarks.commands.readout",
                   "benchmarks.commands.flow", "benchmarks.commands.pretrain",
                   "benchmarks.commands.track", "benchmarks.commands.demo",
                   "benchmarks.commands.study")


class UserError(Exception):
    """A problem the user can fix (bad argument, missing data); printed without traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
