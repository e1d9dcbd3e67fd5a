"""The learning curve of the query retrofit: the dev signals the Trainer logged every ``eval_steps``.

Reads ``<model>/leap_training.json`` (or, for a run still going, the newest checkpoint's ``trainer_state.json``)
and writes a table and a plot of dev NDCG@10 and cosine to the original per query depth against the step.

Example::

    HF_HUB_OFFLINE=1 python -m benchmarks.query.curve --model runs/query/leap

Writes ``benchmarks/results/query/curve.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from benchmarks._common import command_line, meta_info, results_dir, write_plot, write_result

PATTERN = re.compile(r"^eval_(?P<name>.+?)_depth(?P<depth>\d+)_(?P<metric>ndcg@10|cosine)$")


def log_history(model: Path) -> list[dict[str, Any]]:
    record = model / "leap_training.json"
    if record.exists():
        return json.loads(record.read_text())["log_history"] or []
    states = sorted((model / "checkpoints").glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not states:
        raise SystemExit(f"{model} has neither leap_training.json nor a checkpoint")
    return json.loads(states[-1].read_text())["log_history"]


def curve(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for entry in history:
        point: dict[str, Any] = {"step": entry.get("step")}
        for key, value in entry.items():
            if key.endswith("reference_ndcg@10"):
                point["reference_ndcg@10"] = value
            match = PATTERN.match(key)
            if match:
                point.setdefault(match["metric"], {})[int(match["depth"])] = value
        if "ndcg@10" in point:
            rows.append(point)
    return rows


def markdown(command: str, rows: list[dict[str, Any]]) -> str:
    depths = sorted(rows[0]["ndcg@10"]) if rows else []
    lines = ["# Query retrofit: dev learning curve", "", f"Command: `{command}`", "",
             "Held-out cloze retrieval (never a BEIR set): queries cut at each depth against the original's document "
             "embeddings. NDCG@10 x 100 (cosine to the original's query embedding).", "",
             "| step | original | " + " | ".join(f"depth {d}" for d in depths) + " |",
             "| ---: | ---: |" + " ---: |" * len(depths)]
    for row in rows:
        cells = [f"{100 * row['ndcg@10'][d]:.2f} ({row['cosine'][d]:.3f})" for d in depths]
        lines.append(f"| {row['step']} | {100 * row.get('reference_ndcg@10', float('nan')):.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(series: list[tuple[str, list[int], list[float], list[float]]], reference: float | None,
                path: Path) -> None:
    """Two panels against the step: dev NDCG@10 x 100 (left, with the index model's full-depth score dashed) and the
    cosine to the index model's query embedding (right), one line per ``(label, steps, ndcg, cosine)``."""
    from st_leap.reporting import pyplot, save_figure

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, steps, ndcg, cosine in series:
        left.plot(steps, [100 * v for v in ndcg], marker="o", label=label)
        right.plot(steps, cosine, marker="o", label=label)
    if reference is not None:
        left.axhline(100 * reference, color="black", linestyle="--", label="index model, full depth")
    left.set(title="dev NDCG@10 x 100 (the index model's documents)", xlabel="step")
    right.set(title="cosine to the index model's query embedding", xlabel="step")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    save_figure(fig, path)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    steps = [row["step"] for row in rows]
    series = [(f"depth {d}", steps, [row["ndcg@10"][d] for row in rows], [row["cosine"][d] for row in rows])
              for d in sorted(rows[0]["ndcg@10"])]
    plot_curves(series, rows[0].get("reference_ndcg@10"), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/query/leap")
    parser.add_argument("--out", default=str(results_dir("query") / "curve"))
    args = parser.parse_args(argv)
    command = command_line("benchmarks.query.curve", argv)
    rows = curve(log_history(Path(args.model)))
    if not rows:
        raise SystemExit(f"{args.model}: no dev evaluations in the log (train with eval_steps and dev_depths)")
    write_result(args.out, {"rows": rows, "meta_info": meta_info(command)}, markdown(command, rows))
    write_plot(plot, rows, args.out)
    print(f"wrote {Path(args.out).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
