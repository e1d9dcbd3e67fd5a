"""Arguments shared by the commands (argparse types only: nothing heavy is imported here)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from st_leap.resources import TASKS


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


TASK_NAMES = tuple(TASKS)


def task_list(text: str) -> list[str]:
    """``--tasks``: comma-separated short task names."""
    tasks = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown or not tasks:
        raise argparse.ArgumentTypeError(f"unknown task(s) {unknown}; choose from {', '.join(TASK_NAMES)}")
    return tasks


def _number(text: str, cast: type, ok: object, expected: str) -> float | int:
    try:
        value = cast(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from error
    if not ok(value):  # type: ignore[operator]
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def quality_drop(text: str) -> float:
    """``--max-quality-drop``: a number of STS-B points >= 0."""
    return float(_number(text, float, lambda v: math.isfinite(v) and v >= 0, "a number of STS-B points >= 0"))


def positive_int(text: str) -> int:
    """A whole number >= 1 (batch sizes, counts, layers)."""
    return int(_number(text, int, lambda v: v >= 1, "a whole number >= 1"))


def fraction(text: str) -> float:
    """A number in [0, 1] (sample rates, relative drops)."""
    return float(_number(text, float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"))


def open_fraction(text: str) -> float:
    """A number strictly between 0 and 1 (a share that cannot be none or all)."""
    return float(_number(text, float, lambda v: 0.0 < v < 1.0, "a number between 0 and 1 (both excluded)"))


def non_negative(text: str) -> float:
    """A number >= 0 (bands in layers)."""
    return float(_number(text, float, lambda v: v >= 0.0, "a number >= 0"))


def fallback_setting(text: str) -> str | dict[str, float] | None:
    """``--fallback``: ``full`` (full depth), ``none`` (alert only) or a theta in (0, 1] to serve instead."""
    if text.lower() in ("full", "none"):
        return "full" if text.lower() == "full" else None
    theta = fraction(text)
    if theta == 0.0:
        raise argparse.ArgumentTypeError("a fallback theta must lie in (0, 1]")
    return {"exit_threshold": theta}


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", nargs="?", default=None, help="Model folder, Hub id, or 'minilm'/'mpnet' (default: minilm)"
    )


def add_exit_arguments(parser: argparse.ArgumentParser, default_help: str = "the model's") -> None:
    parser.add_argument("--exit-patience", type=positive_int, default=None, help=f"k of the exit rule (default: {default_help})")
    parser.add_argument(
        "--exit-min-layer", type=positive_int, default=None, help=f"l_min of the exit rule (default: {default_help})"
    )


def add_sweep_arguments(parser: argparse.ArgumentParser, thresholds_help: str) -> None:
    """The arguments of the commands that sweep thresholds: model, ``--thresholds``, exit settings, batch size."""
    add_model_argument(parser)
    parser.add_argument("--thresholds", type=thresholds, default=None, help=thresholds_help)
    add_exit_arguments(parser)
    parser.add_argument("--batch-size", type=positive_int, default=32)


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


def plot_if_possible(plot: Any, *args: Any, **kwargs: Any) -> bool:
    """Draw a PNG with ``plot`` (a :mod:`st_leap.reporting` function); without matplotlib, say so and go on."""
    try:
        plot(*args, **kwargs)
    except ImportError as error:
        print(f"(no plot: {error})", file=sys.stderr)
        return False
    return True


def hub_id_of(model_path: str) -> str | None:
    """The Hub id of a packaged local copy (``None`` for anything else): the CLI names models, the library takes
    paths and ids (``st_leap.from_pretrained(path, base_model=...)``, ``model_name(..., names=...)``)."""
    from pathlib import Path

    from st_leap.resources import known_local_models

    path = Path(model_path)
    return known_local_models().get(str(path.resolve())) if path.exists() else None
