"""LEAP retrofit benchmark: train one experiment, measure exits and STS-B, write results JSON + markdown.

    HF_HUB_OFFLINE=1 python -m benchmarks.train_recipe.run --experiment stage1 --name train_recipe_leap

An experiment is ``experiments/<name>.json``: only the keys that differ from ``defaults.json`` (the recipe);
``--config FILE`` takes a whole :class:`st_leap.training.TrainConfig` file instead. Writes
``benchmarks/results/train_recipe/<name>.json`` (run_info / metrics / meta_info) and ``<name>.md``. ``--baseline``
measures the untrained model instead (no training); ``--trained PATH`` measures a model trained before (the
config is then only recorded); ``--ablation NAME`` puts the results ``NAME.json`` of the same recipe without the
exit term into the paper-table comparison (Table 11); ``--report-only`` rewrites the markdown from the JSON. All
numbers are on STS-B test, exit rule theta / l_min=3, measured through the early-exit module's ``encode``.

The recipe is one run of 9,000 steps with length-grouped batches (93 minutes on 2 CPU cores, teacher cache
included):

    HF_HUB_OFFLINE=1 python -m benchmarks.train_recipe.run --experiment 2h --name train_recipe_2h \
        --thresholds 0.90,0.93,0.95,0.97

Its first version was four stages on sentences, each starting from the previous stage's model (teacher cache about
13 minutes once, then about 37 + 36 + 39 + 20 minutes of training, random batches), plus the ablation of stage 1:

    HF_HUB_OFFLINE=1 python -m benchmarks.train_recipe.run --baseline --name train_recipe_baseline
    HF_HUB_OFFLINE=1 python -m benchmarks.train_recipe.run --experiment no_exit --name train_recipe_no_exit \
        --thresholds 0.90,0.93,0.95
    HF_HUB_OFFLINE=1 python -m benchmarks.train_recipe.run --experiment stage1 --name train_recipe_leap \
        --ablation train_recipe_no_exit
    for s in continue continue2 continue3; do HF_HUB_OFFLINE=1 python -m benchmarks.train_recipe.run \
        --experiment $s --name train_recipe_$s --thresholds 0.90,0.93,0.95,0.97; done

``stages.py`` puts the stages into one table (``train_recipe_stages.md``). The experiment ``passages`` is an
optional fifth stage on passage-length texts at max length 256 (see docs/training.md).

The committed experiments were written with the loss names before the paper's terms got the paper's names
(issue 12) and migrated: the old ``late``/``redundancy`` terms are ``anchor``/``adjacent`` now, and
``student_weight_warmup_steps: N`` is ``student_weight_ramp: [0, N / max_steps]``. The results files were
migrated the same way.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks._common import command_line, load_experiment, meta_info, results_dir, write_result
from st_leap import resources
from st_leap.evaluation.sweep import mean_cos_to_final, measure
from st_leap.model import from_pretrained
from st_leap.training import TrainConfig, train

HERE = Path(__file__).resolve().parent
RESULTS = results_dir("train_recipe")


def experiment_config(name: str) -> TrainConfig:
    """The TrainConfig of ``experiments/<name>.json`` over ``defaults.json``."""
    return TrainConfig.from_dict(load_experiment(HERE, name))


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
            "The paper's figures are for its 12-layer MiniLM-L12 trained from BERT-base (l_min 6 of 12), quoted from",
            "arXiv 2605.01058; ours retrofit the 6-layer all-MiniLM-L6-v2 (l_min 3 of 6).",
            "",
            "| paper table | quantity | paper | issue 3 target | original (ours) | LEAP (ours) |",
            "|---|---|---|---|---|---|",
            f"| 2 | exits before the last layer, stock all-MiniLM-L6-v2 | 0.7% | - | {b95['exit_rate']:.1%} | - |",
            f"| 3 | cos to final, layers 3-5 of 6 (paper: layers 6-7 of 12) | 0.945 / 0.963 | - | {fmt(baseline['cos_to_final_3_5'])} | {fmt(m['cos_to_final_3_5'])} |",
            f"| 1 | exits before the last layer (paper: by layer 7 of 12) | 91.9% | >= 85% | {b95['exit_rate']:.1%} | {e95['exit_rate']:.1%} |",
            f"| 1 | E[layers] (paper: of 12; ours: of 6) | 6.7 | <= 4.0 | {b95['expected_layers']:.2f} | {e95['expected_layers']:.2f} |",
            f"| 1 | STS-B exited | 0.760 | >= 0.80 | {fmt(b95['stsb_exited'])} | {fmt(e95['stsb_exited'])} |",
            f"| 1 | STS-B full depth (paper: its baseline without the exit term) | 0.777 | >= 0.81 | {fmt(baseline['stsb_full'])} | {fmt(m['stsb_full'])} |",
        ]
        if ablation is not None and "0.95" in ablation["metrics"]["exits"]:
            a95 = ablation["metrics"]["exits"]["0.95"]
            lines += [
                f"| 11 | same recipe without the exit term: exits | 0% | <= 5% | - | {a95['exit_rate']:.1%} |",
                f"| 11 | same recipe without the exit term: E[layers] | - | - | - | {a95['expected_layers']:.2f} |",
                f"| 11 | same recipe without the exit term: STS-B exited / full | - | - | - | "
                f"{fmt(a95['stsb_exited'])} / {fmt(ablation['metrics']['stsb_full'])} |",
            ]
        else:
            lines.append("| 11 | same recipe without the exit term: exits | 0% | <= 5% | - | not run |")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--experiment", help="experiments/<NAME>.json over defaults.json")
    source.add_argument("--config", help="a whole training config file (JSON/YAML)")
    parser.add_argument("--name", required=True, help="results file stem under benchmarks/results/train_recipe/")
    parser.add_argument("--baseline", action="store_true", help="measure the untrained model only")
    parser.add_argument("--model", default="minilm", help="model for --baseline")
    parser.add_argument("--trained", help="measure this already trained model instead of training (with --config)")
    parser.add_argument("--ablation", help="results stem of the no-exit-term ablation (paper Table 11 row)")
    parser.add_argument("--report-only", action="store_true", help="rewrite <name>.md from <name>.json")
    parser.add_argument("--thresholds", default="0.90,0.93,0.95,0.97")
    parser.add_argument("--no-per-layer-stsb", action="store_true")
    args = parser.parse_args(argv)
    command = command_line("benchmarks.train_recipe.run", argv)
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
        write_result(RESULTS / args.name, result, text)
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
        if not (args.config or args.experiment):
            parser.error("--experiment or --config is required unless --baseline, --trained or --report-only is given")
        config = experiment_config(args.experiment) if args.experiment else TrainConfig.from_file(args.config)
        run_info.update({"experiment": args.experiment, "config_file": args.config, "config": config.to_dict()})
        trained = train(config)
        model = trained.model
        run_info["train_seconds"] = trained.train_seconds
        run_info["teacher_seconds"] = trained.teacher_seconds  # computing (or loading) the teacher cache
        run_info["steps"] = trained.steps
        run_info["log_history"] = trained.log_history  # the Trainer's per-term loss log
    start = time.perf_counter()
    metrics = measure(model, thresholds=thresholds, min_layer=3, per_layer_stsb=not args.no_per_layer_stsb)
    metrics["cos_to_final_3_5"] = mean_cos_to_final(metrics)
    run_info["measure_seconds"] = time.perf_counter() - start
    if baseline is not None:
        metrics["cos_to_final_3_5_lift"] = metrics["cos_to_final_3_5"] - baseline["cos_to_final_3_5"]
    result = {"run_info": run_info, "metrics": metrics, "meta_info": meta_info(command)}
    text = markdown(args.name, result, baseline, ablation)
    write_result(RESULTS / args.name, result, text)
    print(text)


if __name__ == "__main__":
    main()
