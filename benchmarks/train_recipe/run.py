"""LEAP retrofit benchmark: train with a config, measure exits and STS-B, write results JSON + markdown.

    HF_HUB_OFFLINE=1 python benchmarks/train_recipe/run.py --config benchmarks/train_recipe/config.json \
        --name train_recipe_leap

Writes ``benchmarks/results/<name>.json`` (run_info / metrics / meta_info) and ``<name>.md``. ``--baseline``
measures the untrained model instead (no training); ``--trained PATH`` measures a model trained before (the
config is then only recorded); ``--ablation NAME`` puts the results ``NAME.json`` of the same recipe without the
exit term into the paper-table comparison (Table 11); ``--report-only`` rewrites the markdown from the JSON. All
numbers are on STS-B test, exit rule theta / l_min=3, measured through the early-exit module's ``encode``.

The recipe is one run of 9,000 steps with length-grouped batches (93 minutes on 2 CPU cores, teacher cache
included):

    HF_HUB_OFFLINE=1 python benchmarks/train_recipe/run.py --config benchmarks/train_recipe/config_2h.json \
        --name train_recipe_2h --thresholds 0.90,0.93,0.95,0.97

Its first version was four stages on sentences, each starting from the previous stage's model (teacher cache about
13 minutes once, then about 37 + 36 + 39 + 20 minutes of training, random batches), plus the ablation of stage 1:

    HF_HUB_OFFLINE=1 python benchmarks/train_recipe/run.py --baseline --name train_recipe_baseline
    HF_HUB_OFFLINE=1 python benchmarks/train_recipe/run.py --config benchmarks/train_recipe/config_no_exit.json \
        --name train_recipe_no_exit --thresholds 0.90,0.93,0.95
    HF_HUB_OFFLINE=1 python benchmarks/train_recipe/run.py --config benchmarks/train_recipe/config.json \
        --name train_recipe_leap --ablation train_recipe_no_exit
    for s in continue continue2 continue3; do HF_HUB_OFFLINE=1 python benchmarks/train_recipe/run.py \
        --config benchmarks/train_recipe/config_$s.json --name train_recipe_$s --thresholds 0.90,0.93,0.95,0.97; done

``stages.py`` puts the stages into one table (``train_recipe_stages.md``). ``config_passages.json`` is an optional
fifth stage on passage-length texts at max length 256 (see docs/training.md).
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

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from st_leap import resources, training  # noqa: E402
from st_leap.model import from_pretrained  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def meta_info(command: str) -> dict:
    import datasets
    import sentence_transformers
    import transformers

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        sha = ""
    return {
        "command": command,
        "git_sha": sha or "(no commit yet)",
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "datasets": datasets.__version__,
        },
    }


def fmt(x: float) -> str:
    return f"{x:.3f}"


def markdown(name: str, result: dict, baseline: dict | None, ablation: dict | None = None) -> str:
    m = result["metrics"]
    me = "original" if not result["run_info"].get("config") else "LEAP"
    L = m["num_layers"]
    lines = [f"# {name}", "", f"Command: `{result['meta_info']['command']}`", ""]
    cfg = result["run_info"].get("config")
    if cfg:
        lines += ["Config:", "", "```json", json.dumps(cfg, indent=2), "```", ""]
        info = result["run_info"]
        timing = f"Training time: {info['train_seconds']:.0f} s"
        if info.get("teacher_seconds") is not None:
            total = info["train_seconds"] + info["teacher_seconds"]
            timing += f"; teacher cache: {info['teacher_seconds']:.0f} s; together {total / 60:.1f} min"
        lines += [timing, ""]
    header = "| | " + " | ".join(f"L{i}" for i in range(1, L + 1)) + " |"
    sep = "|---|" + "---|" * L
    lines += [
        "## Per-layer similarity to the final layer (STS-B test sentences, mean cosine of pooled states)",
        "",
        header,
        sep,
    ]
    rows = []
    if baseline:
        rows.append(("original cos to final", baseline["to_final"]))
    rows.append((f"{me} cos to final", m["to_final"]))
    if baseline:
        rows.append(("original adjacent cos", baseline["adjacent"]))
    rows.append((f"{me} adjacent cos", m["adjacent"]))
    if "stsb_per_layer" in m:
        if baseline and "stsb_per_layer" in baseline:
            rows.append(("original STS-B of layer", baseline["stsb_per_layer"]))
        rows.append((f"{me} STS-B of layer", m["stsb_per_layer"]))
    for label, values in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(v) for v in values) + " |")
    lines += [
        "",
        "## Exits (l_min=3, patience 1) and STS-B test Spearman",
        "",
        "| theta | model | exits before L | E[layers] | exit-layer counts | STS-B exited | STS-B full depth |",
        "|---|---|---|---|---|---|---|",
    ]
    for theta, e in m["exits"].items():
        if baseline and theta in baseline["exits"]:
            b = baseline["exits"][theta]
            lines.append(
                f"| {theta} | original | {b['exit_rate']:.1%} | {b['expected_layers']:.2f} | {b['counts']} | "
                f"{fmt(b['stsb_exited'])} | {fmt(baseline['stsb_full'])} |"
            )
        lines.append(
            f"| {theta} | {me} | {e['exit_rate']:.1%} | {e['expected_layers']:.2f} | {e['counts']} | "
            f"{fmt(e['stsb_exited'])} | {fmt(m['stsb_full'])} |"
        )
    e95 = m["exits"].get("0.95")
    if e95 and baseline and "0.95" in baseline["exits"]:
        b95 = baseline["exits"]["0.95"]
        lines += [
            "",
            "## Side by side with the paper (theta=0.95, l_min=3, STS-B test)",
            "",
            "Paper figures only where our issue tracker quotes them; '-' = not quoted, not guessed.",
            "",
            "| paper table | quantity | paper (as quoted) | issue 3 target | original (ours) | LEAP (ours) |",
            "|---|---|---|---|---|---|",
            f"| 1 | exits before the last layer, stock all-MiniLM-L6-v2 | 0.7% (issue 2) | - | {b95['exit_rate']:.1%} | - |",
            f"| 1 | cos to final, layers 3-5 (mean) | - | - | {fmt(baseline['cos_to_final_3_5'])} | {fmt(m['cos_to_final_3_5'])} |",
            f"| 3 | exits before the last layer | - | >= 85% | {b95['exit_rate']:.1%} | {e95['exit_rate']:.1%} |",
            f"| 3 | E[layers] of 6 | - | <= 4.0 | {b95['expected_layers']:.2f} | {e95['expected_layers']:.2f} |",
            f"| 3 | STS-B exited | - | >= 0.80 | {fmt(b95['stsb_exited'])} | {fmt(e95['stsb_exited'])} |",
            f"| 3 | STS-B full depth | - | >= 0.81 | {fmt(baseline['stsb_full'])} | {fmt(m['stsb_full'])} |",
        ]
        if ablation is not None and "0.95" in ablation["metrics"]["exits"]:
            a95 = ablation["metrics"]["exits"]["0.95"]
            lines += [
                f"| 11 | same recipe without the exit term: exits | - | <= 5% | - | {a95['exit_rate']:.1%} |",
                f"| 11 | same recipe without the exit term: E[layers] | - | - | - | {a95['expected_layers']:.2f} |",
                f"| 11 | same recipe without the exit term: STS-B exited / full | - | - | - | "
                f"{fmt(a95['stsb_exited'])} / {fmt(ablation['metrics']['stsb_full'])} |",
            ]
        else:
            lines.append("| 11 | same recipe without the exit term: exits | - | <= 5% | - | not run |")
        if ablation is not None:
            lines += ["", f"Table 11 rows from `{ablation['meta_info']['command']}` ({ablation['run_info'].get('steps')} steps)."]
    lines += [
        "",
        f"Mean cosine of layers 3-5 to layer 6: {fmt(m['cos_to_final_3_5'])}"
        + (
            f" (original {fmt(baseline['cos_to_final_3_5'])}, lift {m['cos_to_final_3_5'] - baseline['cos_to_final_3_5']:+.3f})"
            if baseline
            else ""
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="training config (JSON/YAML)")
    parser.add_argument("--name", required=True, help="results file stem under benchmarks/results/")
    parser.add_argument("--baseline", action="store_true", help="measure the untrained model only")
    parser.add_argument("--model", default="minilm", help="model for --baseline")
    parser.add_argument("--trained", help="measure this already trained model instead of training (with --config)")
    parser.add_argument("--ablation", help="results stem of the no-exit-term ablation (paper Table 11 row)")
    parser.add_argument("--report-only", action="store_true", help="rewrite <name>.md from <name>.json")
    parser.add_argument("--thresholds", default="0.90,0.93,0.95,0.97")
    parser.add_argument("--no-per-layer-stsb", action="store_true")
    args = parser.parse_args()
    command = "HF_HUB_OFFLINE=1 python " + " ".join(
        [str(Path(sys.argv[0]).relative_to(ROOT)) if Path(sys.argv[0]).is_absolute() else sys.argv[0]] + sys.argv[1:]
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    baseline_path = RESULTS / "train_recipe_baseline.json"
    baseline = None
    if not args.baseline and baseline_path.exists():
        baseline = json.loads(baseline_path.read_text())["metrics"]
    ablation = None
    if args.ablation:
        ablation_path = RESULTS / f"{args.ablation}.json"
        if not ablation_path.exists():
            parser.error(f"--ablation: {ablation_path} does not exist (run the ablation config first)")
        ablation = json.loads(ablation_path.read_text())
    if args.report_only:
        result = json.loads((RESULTS / f"{args.name}.json").read_text())
        text = markdown(args.name, result, baseline, ablation)
        (RESULTS / f"{args.name}.md").write_text(text)
        print(text)
        return

    thresholds = [float(x) for x in args.thresholds.split(",")]
    run_info: dict = {"name": args.name}
    if args.baseline:
        model = from_pretrained(resources.resolve_model(args.model))
        run_info.update({"model": args.model, "trained": False, "train_seconds": 0.0})
    elif args.trained:
        model = from_pretrained(args.trained)
        log = Path(args.trained) / "leap_training.json"
        training_log = json.loads(log.read_text()) if log.exists() else {}
        run_info.update(
            {
                "trained_model": args.trained,
                "config": training_log.get("config"),
                "train_seconds": training_log.get("train_seconds", 0.0),
                "teacher_seconds": training_log.get("teacher_seconds"),
                "steps": training_log.get("steps"),
            }
        )
    else:
        if not args.config:
            parser.error("--config is required unless --baseline, --trained or --report-only is given")
        config = training.TrainConfig.from_file(args.config)
        run_info.update({"config_file": args.config, "config": config.to_dict()})
        model = training.train(config)
        run_info["train_seconds"] = model.leap_train_seconds
        run_info["teacher_seconds"] = model.leap_teacher_seconds  # computing (or loading) the teacher cache
        run_info["steps"] = getattr(model, "leap_steps", None)
        run_info["log_history"] = getattr(model, "leap_log_history", None)  # the Trainer's per-term loss log
    start = time.perf_counter()
    metrics = training.measure(model, thresholds=thresholds, min_layer=3, per_layer_stsb=not args.no_per_layer_stsb)
    metrics["cos_to_final_3_5"] = training.mean_cos_to_final(metrics)
    run_info["measure_seconds"] = time.perf_counter() - start
    if baseline is not None:
        metrics["cos_to_final_3_5_lift"] = metrics["cos_to_final_3_5"] - baseline["cos_to_final_3_5"]
    result = {"run_info": run_info, "metrics": metrics, "meta_info": meta_info(command)}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    text = markdown(args.name, result, baseline, ablation)
    (RESULTS / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
