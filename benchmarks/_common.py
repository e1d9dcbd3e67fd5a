"""What every benchmark shares: where results go, the command it records, its metadata, its experiment configs.

Each benchmark is a module run from the repository root (``HF_HUB_OFFLINE=1 python -m benchmarks.<topic>.<script>``)
and writes ``benchmarks/results/<topic>/<name>.json`` (with the command, package versions, git sha and machine in
it) plus a markdown table beside it.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from st_leap import reporting

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def results_dir(topic: str) -> Path:
    """``benchmarks/results/<topic>/``, created."""
    path = RESULTS / topic
    path.mkdir(parents=True, exist_ok=True)
    return path


def command_line(module: str, argv: list[str] | None = None) -> str:
    """The command that reproduces this run: ``HF_HUB_OFFLINE=1 python -m <module> <args>``."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["HF_HUB_OFFLINE=1 python -m", module, *args]).strip()


def meta_info(command: str, **extra: Any) -> dict[str, Any]:
    """Run metadata (time, command, versions, git sha, machine) of :func:`st_leap.reporting.run_info`."""
    return reporting.run_info(command=command, **extra)


def write_result(stem: str | Path, result: dict[str, Any], markdown: str | None = None) -> Path:
    """``<stem>.json`` (and ``<stem>.md``), each written atomically; returns the JSON path."""
    stem = Path(stem)
    path = reporting.write_json(result, stem.with_suffix(".json"))
    if markdown is not None:
        reporting.write_text(markdown, stem.with_suffix(".md"))
    return path


def write_plot(plot: Any, data: Any, stem: str | Path) -> Path | None:
    """``plot(data, <stem>.png)``, or a printed note when matplotlib is not installed (the JSON and markdown
    results stand without it). Returns the image path, or None."""
    path = Path(stem).with_suffix(".png")
    try:
        plot(data, path)
    except ImportError as error:
        print(f"(no plot: {error})")
        return None
    return path


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_experiment(topic_dir: str | Path, name: str) -> dict[str, Any]:
    """``<topic>/defaults.json`` with ``<topic>/experiments/<name>.json`` on top (nested dicts merged key by key):
    an experiment file holds only what differs from the defaults."""
    topic_dir = Path(topic_dir)
    path = topic_dir / "experiments" / f"{name}.json"
    if not path.exists():
        known = sorted(p.stem for p in (topic_dir / "experiments").glob("*.json"))
        raise SystemExit(f"No experiment {name!r} ({path}); known: {', '.join(known)}")
    defaults = json.loads((topic_dir / "defaults.json").read_text())
    return _merge(defaults, json.loads(path.read_text()))
