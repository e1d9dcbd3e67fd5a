"""The paper's Table 11 (ablation) and Table 12 (beta sensitivity) at our scale, for the paper's loss and ours.

    HF_HUB_OFFLINE=1 python benchmarks/paper_tables/run.py t11_paper_final t11_paper_inter t11_paper_contrast \
        t11_paper_exit

Each experiment is ``experiments/<name>.json``: only the keys that differ from ``defaults.json`` (a retrofit of
all-MiniLM-L6-v2 with the frozen original as precomputed teacher, batch 64, lr 5e-5, 10% warm-up, cosine
schedule: the paper's Table 14 training settings, at 800 steps, about 16 minutes of training on 2 CPU cores, for
every Table 11 row; 400 steps for Table 12), plus ``table`` and ``row`` labels. Every row is measured with the
early-exit module's ``encode`` on STS-B test at theta 0.90 / 0.93 / 0.95, l_min = 3 (the paper's l_min = 6 of
12, scaled to 6 layers). Results: ``benchmarks/results/paper_tables/<name>.{json,md}`` and one summary per table
(``table11.md``, ``table11-ours.md``, ``table12.md``). An experiment whose result file exists is skipped
(``--force`` reruns it), so a stopped queue resumes where it stopped; ``--summary`` only rewrites the summaries.
Models go to ``runs/paper_tables/<name>`` (gitignored).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "paper_tables"
THRESHOLDS = (0.90, 0.93, 0.95)

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
    path = HERE / "experiments" / f"{name}.json"
    if not path.exists():
        known = sorted(p.stem for p in (HERE / "experiments").glob("*.json"))
        raise SystemExit(f"No experiment {name!r} ({path}); known: {', '.join(known)}")
    data = json.loads((HERE / "defaults.json").read_text()) | json.loads(path.read_text())
    labels = {"table": data.pop("table"), "row": data.pop("row")}
    data["output_dir"] = f"runs/paper_tables/{name}"
    loss = data.get("loss", {})
    per_layer = loss.get("intermediate_weight", 0.3 if loss.get("preset") == "paper" else 0.0) > 0
    data["cache_dir"] = f"runs/paper_tables/teacher_cache_{data['num_sentences']}_{'layers' if per_layer else 'final'}"
    return labels, data


def meta_info(command: str) -> dict:
    import sentence_transformers
    import torch
    import transformers

    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {
        "command": command,
        "git_sha": sha,
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
        },
    }


def run_one(name: str, command: str) -> dict:
    from st_leap import training

    labels, data = experiment_config(name)
    config = training.TrainConfig.from_dict(data)
    model = training.train(config)
    start = time.perf_counter()
    metrics = training.measure(model, thresholds=THRESHOLDS, min_layer=config.exit_min_layer, per_layer_stsb=True)
    log = json.loads((Path(config.output_dir) / "leap_training.json").read_text())
    return {
        "run_info": {
            **labels,
            "name": name,
            "config": config.to_dict(),
            "loss": log["loss"],
            "steps": log["steps"],
            "train_seconds": log["train_seconds"],
            "teacher_seconds": log["teacher_seconds"],
            "measure_seconds": time.perf_counter() - start,
            "log_history": log["log_history"],
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
    order = {p.stem: i for i, p in enumerate(sorted((HERE / "experiments").glob("*.json")))}
    results.sort(key=lambda r: (r["run_info"]["row"].startswith("+"), order.get(r["run_info"]["name"], 0)))
    loss_name = "st_leap's own loss terms" if table.endswith("ours") else "the paper's loss (preset='paper')"
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
    paper = PAPER.get(table.split("-")[0]) if not table.endswith("ours") else None
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
    for table in ("11", "11-ours", "12"):
        text = summary(table)
        if text is not None:
            (RESULTS / f"table{table}.md").write_text(text)
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
            command = f"HF_HUB_OFFLINE=1 python benchmarks/paper_tables/run.py {name}"
            result = run_one(name, command)
            tmp = out.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(result, indent=2))
            tmp.replace(out)
            write_summaries()
    write_summaries()


if __name__ == "__main__":
    main()
