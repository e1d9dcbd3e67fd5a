"""Resident memory per round, one line per soak run or bisect variant: the picture of issue 17's memory findings.

Reads result files of :mod:`benchmarks.soak.run` (one line per file, labelled with its allocator environment) and of
:mod:`benchmarks.soak.memory` (one line per variant), and marks the rounds at the largest batch size, where glibc's
heap grows.

Example::

    python -m benchmarks.soak.plot benchmarks/results/soak/soak.json benchmarks/results/soak/soak_jemalloc.json \\
        --out benchmarks/results/soak/soak_rss.png

Writes the PNG (needs matplotlib: ``pip install 'st-leap[plot]'``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from st_leap.reporting import pyplot, save_figure


def series(path: str | Path) -> dict[str, list[dict]]:
    """``{label: rounds}`` of one result file: a soak run gives one series, a memory bisect one per variant."""
    result = json.loads(Path(path).read_text())
    rounds = result["results"].get("rounds")
    if isinstance(rounds, list):  # a soak run
        env = result["run_info"].get("allocator_env") or {}
        allocator = "jemalloc" if "jemalloc" in env.get("LD_PRELOAD", "") else ", ".join(
            f"{k}={v}" for k, v in env.items()) or "glibc defaults"
        return {f"soak, {allocator} ({Path(path).stem})": rounds}
    return {variant: res["rounds"] for variant, res in result["results"].items()}  # a memory bisect


def plot(paths: list[str], out: str | Path, title: str = "Resident memory per round") -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for path in paths:
        for label, rounds in series(path).items():
            xs = [r["round"] for r in rounds]
            line = ax.plot(xs, [r["rss_mib"] for r in rounds], marker=".", label=label)[0]
            largest = max(r["batch_size"] for r in rounds)
            big = [r for r in rounds if r["batch_size"] == largest]
            ax.scatter([r["round"] for r in big], [r["rss_mib"] for r in big], s=30, facecolors="none",
                       edgecolors=line.get_color())
    ax.set_xlabel("round (open circles: rounds at the largest batch size)")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="soak or memory-bisect result JSON files")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--title", default="Resident memory per round")
    args = parser.parse_args(argv)
    print(plot(args.results, args.out, args.title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
