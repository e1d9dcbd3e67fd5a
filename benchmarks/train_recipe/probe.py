"""Short LEAP training probes: one config with overrides per run, measured by replay on STS-B test.

    HF_HUB_OFFLINE=1 python -m benchmarks.train_recipe.probe --experiment stage1 \
        --name A --set max_steps=300 --loss '{"adjacent_weight": 4}'

``--summary`` writes ``benchmarks/results/train_recipe/train_recipe_probes.md`` from all recorded probes. Each probe appends one JSON line (overrides, training time, per-layer cosine to final / adjacent / STS-B, exits
and exited STS-B per theta) to ``benchmarks/results/train_recipe/train_recipe_probes.jsonl``; the models go to
``runs/probes/<name>`` (gitignored). Used to choose the recipe's loss settings (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks._common import ROOT, command_line, results_dir
from benchmarks.train_recipe.run import experiment_config
from st_leap.evaluation.sweep import measure
from st_leap.reporting import write_text
from st_leap.training import TrainConfig, train

RESULTS = results_dir("train_recipe") / "train_recipe_probes.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--experiment", help="experiments/<NAME>.json over defaults.json")
    source.add_argument("--config", help="a whole training config file")
    parser.add_argument("--name")
    parser.add_argument("--summary", action="store_true", help="write the markdown table of all probes and exit")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=JSON_VALUE")
    parser.add_argument("--loss", default="{}", help="LEAPLoss keyword overrides (JSON)")
    parser.add_argument("--thresholds", default="0.90,0.93,0.95")
    args = parser.parse_args()
    if args.summary:
        text = summary([json.loads(line) for line in RESULTS.read_text(encoding="utf-8").splitlines() if line])
        write_text(text, RESULTS.with_suffix(".md"))
        print(text)
        return
    if not ((args.config or args.experiment) and args.name):
        parser.error("--experiment (or --config) and --name are required (or --summary)")

    config = experiment_config(args.experiment) if args.experiment else TrainConfig.from_file(args.config)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    data = config.to_dict() | overrides
    data["loss"] = dict(data.get("loss") or {}) | json.loads(args.loss)
    data["output_dir"] = str(ROOT / "runs" / "probes" / args.name)
    config = TrainConfig.from_dict(data)
    start = time.perf_counter()
    trained = train(config)
    model = trained.model
    train_seconds = time.perf_counter() - start
    thresholds = tuple(float(t) for t in args.thresholds.split(","))
    metrics = measure(model, thresholds=thresholds, min_layer=config.exit_min_layer, method="replay")
    record = {
        "name": args.name,
        "command": command_line("benchmarks.train_recipe.probe"),
        "config": config.to_dict(),
        "steps": trained.steps,
        "train_seconds": round(train_seconds, 1),
        "metrics": metrics,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    m = metrics
    print(f"{args.name}: {train_seconds:.0f}s steps={record['steps']}")
    print("  to_final ", " ".join(f"{x:.3f}" for x in m["to_final"]))
    print("  adjacent ", " ".join(f"{x:.3f}" for x in m["adjacent"]))
    print("  stsb/layer", " ".join(f"{x:.3f}" for x in m["stsb_per_layer"]))
    for theta, e in m["exits"].items():
        print(f"  theta {theta}: exits {e['exit_rate']:.1%} E[l] {e['expected_layers']:.2f} "
              f"counts {e['counts']} exited {e['stsb_exited']:.3f} full {m['stsb_full']:.3f}")


def summary(records: list[dict]) -> str:
    """Markdown: one row per probe (settings that differ from the recipe config, layer figures, exits)."""
    lines = [
        "# LEAP training probes (STS-B test, replayed exit rule, l_min=3)",
        "",
        "Each row: `python -m benchmarks.train_recipe.probe ...` (command in the JSONL), all-MiniLM-L6-v2 student, "
        "frozen original as precomputed teacher, batch 32, linear decay. Layer columns are layers 2-5.",
        "",
        "| probe | steps | lr | loss overrides | cos to final L2-5 | adjacent cos L2-5 | STS-B of layer L2-5 | "
        "exits / E[l] / STS-B exited @0.93 | @0.95 | STS-B full |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        m, c = r["metrics"], r["config"]

        def row(key: str, m: dict = m) -> str:
            return " ".join(f"{x:.2f}" for x in m[key][1:5])

        def ex(theta: str, m: dict = m) -> str:
            e = m["exits"].get(theta)
            return "-" if e is None else f"{e['exit_rate']:.0%} / {e['expected_layers']:.2f} / {e['stsb_exited']:.3f}"

        lines.append(
            f"| {r['name']} | {r['steps']} | {c['learning_rate']:g} | `{json.dumps(c['loss'])}` | {row('to_final')} | "
            f"{row('adjacent')} | {row('stsb_per_layer')} | {ex('0.93')} | {ex('0.95')} | {m['stsb_full']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
