"""Reading a user's files: UTF-8 text (gzip-compressed when the name ends in ``.gz``), JSON lines, and errors that
name the file and the line.

A leaf module: it imports nothing from st_leap, so that both the corpus reader (:mod:`st_leap.corpus`) and the
calibration data readers (:mod:`st_leap.evaluation.user_data`) build on it without one importing the other.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["file_line", "open_text", "read_json_lines", "require_file"]


def file_line(path: Path | str, line: int) -> str:
    """Where an error in a user's file is.

    Args:
        path: The file.
        line: The 1-based line number.

    Returns:
        ``"PATH, line N"``.
    """
    return f"{path}, line {line}"


def open_text(path: Path) -> Any:
    """Open a text file for reading as UTF-8, gzip-compressed when its name ends in ``.gz``.

    Args:
        path: The file.

    Returns:
        The open text stream (use it in a ``with`` block).
    """
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8", newline="")


def read_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Read every non-blank line of a JSON-lines file (``.gz`` too) as a JSON object.

    Args:
        path: The file.

    Returns:
        An iterator of ``(line number, object)``.

    Raises:
        ValueError: naming the file and the line of a line that is not a JSON object, or the file when it is not
            UTF-8 text.
    """
    try:
        with open_text(path) as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{file_line(path, number)}: not a JSON object ({error.msg})") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{file_line(path, number)}: not a JSON object")
                yield number, obj
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason})") from None


def require_file(path: Path, what: str) -> None:
    """Check that ``path`` is a file with something in it.

    Args:
        path: The file.
        what: What the file is, for the message (``"corpus file"``).

    Raises:
        FileNotFoundError: ``path`` is not a file, naming ``what`` and ``path``.
        ValueError: the file is empty, naming it.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"{file_line(path, 1)}: the file is empty")
