"""Arguments shared by the commands (argparse types only: nothing heavy is imported here)."""

from __future__ import annotations

import argparse
import sys


def thresholds(text: str) -> list[float | None]:
    """``--thresholds``: comma-separated thetas in (0, 1]; ``none`` (or ``full``) is full depth."""
    values: list[float | None] = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item in ("none", "full"):
            values.append(None)
            continue
        try:
            value = float(item)
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                f"thresholds must be comma-separated numbers in (0, 1] or 'none', got {text!r}"
            ) from error
        if not 0.0 < value <= 1.0:
            raise argparse.ArgumentTypeError(f"thresholds must lie in (0, 1], got {item!r} in {text!r}")
        values.append(value)
    return values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from error
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", nargs="?", default=None, help="Model folder, Hub id, or 'minilm'/'mpnet' (default: minilm)"
    )


def add_exit_arguments(parser: argparse.ArgumentParser, default_help: str = "the model's") -> None:
    parser.add_argument("--exit-patience", type=positive_int, default=None, help=f"k of the exit rule (default: {default_help})")
    parser.add_argument(
        "--exit-min-layer", type=positive_int, default=None, help=f"l_min of the exit rule (default: {default_help})"
    )


def exit_overrides(args: argparse.Namespace) -> dict[str, int]:
    """The exit settings given on the command line (the others stay the model's)."""
    given = {"exit_patience": args.exit_patience, "exit_min_layer": args.exit_min_layer}
    return {key: value for key, value in given.items() if value is not None}


def read_lines(path: str | None, limit: int | None = None) -> list[str] | None:
    """Non-empty lines of a text file (``None`` without a path: the command's default sentences)."""
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[:limit] if limit else lines


def command_line() -> str:
    """The command as typed, for the result files."""
    return "st-leap " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("st-leap") else " ".join(sys.argv)
