"""The paper's Table 11 (ablation) and Table 12 (beta sensitivity) at our scale, for the paper's loss and ours.

    HF_HUB_OFFLINE=1 python -m benchmarks.paper_tables.run t11_paper_final t11_paper_inter t11_paper_contrast \
        t11_paper_exit

Each experiment is ``experiments/<name>.json``: only the keys that differ from ``defaults.json`` (a retrofit of
all-MiniLM-L6-v2 with the frozen original as precomputed teacher, batch 64, lr 5e-5, 10% warm-up, cosine
schedule: the paper's Table 14 training settings, at 800 steps, about 16 minutes of training on 2 CPU cores, for
every Table 11 row; 400 steps for Table 12), plus ``table`` and ``row`` labels. Every row is measured with the
early-exit module's ``encode`` on STS-B test at theta 0.90 / 0.93 / 0.95, l_min = 3 (the paper's l_min = 6 of
12, scaled to 6 layers). Results: ``benchmarks/results/paper_tables/<name>.{json,md}`` and one summary per table
(``table11.md``, ``table11-ours.md``, ``table11-change.md``, ``table12.md``). An experiment whose result file exists is skipped
(``--force`` reruns it), so a stopped queue resumes where it stopped; ``--summary`` only rewrites the summaries.
Models go to ``runs/paper_tables/<name>`` (gitignored).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks._common import load_experiment, meta_info, results_dir, write_result
from st_leap.evaluation.sweep import measure
from st_leap.reporting import write_text
from st_leap.training import TrainConfig, train

HERE = Path(__file__).resolve().parent
RESULTS = results_dir("paper_tables")
THRESHOLDS = (0.90, 0.93, 0.95)
# Row order of the summaries: each Table 11 row adds one term to the row above it.
ORDER = [
    *(f"t11_paper_{row}" for row in ("final", "inter", "contrast", "exit", "full")),
    *(f"t11_ours_{row}" for row in ("final", "contrast", "exit", "full")),
    *(f"t12_paper_beta{beta}" for beta in ("01", "02", "04", "06", "08")),
    "t11_change_adjacent",
    "t11_change_lr",
]

# The paper's own rows (Table 11: STS-B, exit rate at its L7 of 12; Table 12: STS-B, exit@L7), quoted verbatim.
PAPER = {
    "11": {
        "final only": "0.72 / 0%",
        "+ intermediate": "0.71 / 0%",
        "+ contrastive": "0.70 / 0%",
        "+ exit (eq. 3)": "0.763 / 91.9%",
    },
    "12": {
        "beta = 0.1": "0.516 / 94.4%",
        "beta = 0.2": "0.526 / 88.4%",
        "beta = 0.4": "0.487 / 92.6%",
        "beta = 0.6": "0.517 / 84.9%",
        "beta = 0.8": "0.528 / 94.6%",
    },
}


def experiment_config(name: str) -> tuple[dict, dict]:
    """(labels, TrainConfig dict) of an experiment: defaults.json with the experiment's keys on top."""
    data = load_experiment(HERE, name)
    labels = {"table": data.pop("table"), "row": data.pop("row")}
    data["output_dir"] = f"runs/paper_tables/{name}"
    loss = data.get("loss", {})
    per_layer = loss.get("intermediate_weight", 0.3 if loss.get("preset") == "paper" else 0.0) > 0
    data["cache_dir"] = f"runs/paper_tables/teacher_cache_{data['num_sentences']}_{'layers' if per_layer else 'final'}"
    return labels, data


def run_one(name: str, command: str) -> dict:
    labels, data = experiment_config(name)
    config = TrainConfig.from_dict(data)
    trained = train(config)
    start = time.perf_counter()
    metrics = measure(trained.model, thresholds=THRESHOLDS, min_layer=config.exit_min_layer, per_layer_stsb=True)
    return {
        "run_info": {
            **labels,
            "name": name,
            "config": config.to_dict(),
            "loss": trained.loss_config,
            "steps": trained.steps,
            "train_seconds": trained.train_seconds,
            "teacher_seconds": trained.teacher_seconds,
            "measure_seconds": time.perf_counter() - start,
            "log_history": trained.log_history,
        },
        "metrics": metrics,
        "meta_info": meta_info(command),
    }


def row_markdown(result: dict) -> str:
    info, m = result["run_info"], result["metrics"]
    cells = [
        info["row"],
        str(info["steps"]),
        f"{info['train_seconds'] / 60:.1f}",
        f"{m['stsb_full']:.3f}",
    ]
    for theta in THRESHOLDS:
        e = m["exits"][str(theta)]
        cells.append(f"{e['exit_rate']:.1%} / {e['expected_layers']:.2f} / {e['stsb_exited']:.3f}")
    cells.append(" / ".join(f"{x:.3f}" for x in m["to_final"][2:5]))
    cells.append(" / ".join(f"{x:.3f}" for x in m["adjacent"][2:5]))
    return "| " + " | ".join(cells) + " |"


def summary(table: str) -> str | None:
    results = []
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        if result["run_info"]["table"] == table:
            results.append(result)
    if not results:
        return None
    results.sort(key=lambda r: ORDER.index(r["run_info"]["name"]) if r["run_info"]["name"] in ORDER else len(ORDER))
    loss_name = {
        "11-ours": "st_leap's own loss terms",
        "11-change": "the paper's full loss with one change each",
    }.get(table, "the paper's loss (preset='paper')")
    lines = [
        f"# Table {table.split('-')[0]} at our scale: {loss_name}",
        "",
        "Retrofit of all-MiniLM-L6-v2 (6 layers), frozen original as precomputed teacher, NLI sentences, batch 64,",
        "lr 5e-5, 10% warm-up, cosine schedule; the same step budget for every row (`benchmarks/paper_tables/`).",
        "Measured with the early-exit module's `encode` on STS-B test (2,552 sentences), l_min = 3.",
        "Each cell under theta: exits before the last layer / E[layers] of 6 / STS-B of the exited embeddings.",
        "",
        "Commands:",
        "",
    ]
    lines += [f"- `{r['meta_info']['command']}` ({r['run_info']['name']})" for r in results]
    header = "| row | steps | train min | STS-B full | " + " | ".join(f"theta {t}" for t in THRESHOLDS)
    header += " | cos to final L3 / L4 / L5 | adjacent cos L3 / L4 / L5 |"
    lines += ["", header, "|" + "---|" * (header.count("|") - 1)]
    lines += [row_markdown(r) for r in results]
    paper = PAPER.get(table)
    if paper:
        lines += [
            "",
            "The paper's rows (MiniLM-L12 trained from BERT-base for 10 epochs on 1.5M sentences; STS-B / exits by",
            "its layer 7 of 12 at theta 0.95), quoted verbatim:",
            "",
            "| row | paper |",
            "|---|---|",
        ]
        lines += [f"| {row} | {value} |" for row, value in paper.items()]
    return "\n".join(lines) + "\n"


def write_summaries() -> None:
    for table in ("11", "11-ours", "11-change", "12"):
        text = summary(table)
        if text is not None:
            write_text(text, RESULTS / f"table{table}.md")
            print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="*", help="experiment names (experiments/<name>.json), run in order")
    parser.add_argument("--force", action="store_true", help="rerun experiments whose result file exists")
    parser.add_argument("--summary", action="store_true", help="only rewrite the summary tables")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.experiments:
        experiment_config(name)  # fail on a bad name before any training
    if not args.summary:
        for name in args.experiments:
            out = RESULTS / f"{name}.json"
            if out.exists() and not args.force:
                print(f"{name}: {out} exists, skipped (--force reruns it)")
                continue
            command = f"HF_HUB_OFFLINE=1 python -m benchmarks.paper_tables.run {name}"
            write_result(out.with_suffix(""), run_one(name, command))
            write_summaries()
    write_summaries()


if __name__ == "__main__":
    main()
