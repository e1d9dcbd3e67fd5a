"""The ``st-leap`` command line: one module per command, each with ``add_parser(subparsers)`` and ``run(args)``.

Parsers import nothing heavy, so ``st-leap --help`` answers at once; a command imports the library (torch,
sentence-transformers) only when it runs. Commands call st_leap's public API and hold no logic of their own.
Every command works offline on the packaged model (``minilm``) and the shared data folder (``$ST_LEAP_DATA``).
"""

from __future__ import annotations

import argparse
import sys

from st_leap.cli import (
    calibrate,
    demo,
    diagnose,
    evaluate,
    export,
    fit_maps,
    fit_query_encoder,
    monitor,
    serve,
    train,
)
from st_leap.version import __version__

COMMANDS = (demo, diagnose, train, evaluate, calibrate, fit_maps, fit_query_encoder, export, monitor, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="st-leap", description="LEAP early exit for sentence-transformers.")
    parser.add_argument("--version", action="version", version=f"st-leap {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers).set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:  # bad input: a message, not a traceback
        print(f"st-leap {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
