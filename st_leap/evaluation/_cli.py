"""``st-leap evaluate`` and ``st-leap calibrate``: registered in :mod:`st_leap.cli`, implemented here."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from st_leap.evaluation._utils import format_theta, write_json


def _threshold_list(text: str) -> list[float | None]:
    values: list[float | None] = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item in ("none", "full"):
            values.append(None)
            continue
        try:
            values.append(float(item))
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                f"thresholds must be comma-separated numbers in (0, 1] or 'none', got {text!r}"
            ) from error
    return values


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", nargs="?", default=None, help="Model folder, Hub id, or 'minilm'/'mpnet' (default: minilm)"
    )
    parser.add_argument(
        "--thresholds",
        type=_threshold_list,
        default=None,
        help="Comma-separated thetas; 'none' = full depth (default: 0.90,0.92,0.93,0.95,0.97,0.99)",
    )
    parser.add_argument("--exit-patience", type=int, default=None, help="k of the exit rule (default: the model's)")
    parser.add_argument(
        "--exit-min-layer", type=int, default=None, help="l_min of the exit rule (default: the model's)"
    )
    parser.add_argument("--batch-size", type=int, default=32)


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="STS-B / SciFact / NFCorpus through mteb (or beir) at full depth and per exit threshold.",
        description=(
            "Runs the tasks at full depth and at every threshold, writes mteb's own result files (model metadata "
            "names the exit settings) and a summary evaluate.{json,md,png} with the Pareto and decision tables."
        ),
    )
    _common_arguments(parser)
    parser.add_argument("--tasks", default="stsb,scifact,nfcorpus", help="Comma-separated: stsb, scifact, nfcorpus")
    parser.add_argument("--out", default="st_leap_evaluate", help="Output folder (default: %(default)s)")
    parser.add_argument(
        "--backend",
        choices=["mteb", "beir"],
        default="mteb",
        help="mteb (default) or beir (retrieval through BEIR, STS-B through the sentence-transformers evaluator)",
    )
    parser.add_argument("--source", choices=["auto", "local", "hub"], default="auto", help="mteb data source")
    parser.add_argument("--no-full-depth", action="store_true", help="Skip the full-depth reference run")
    return parser


def add_calibrate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "calibrate",
        help="Largest speed-up whose STS-B quality drop on held-out data stays within a budget.",
        description=(
            "Sweeps theta on STS-B dev (held out), picks the threshold with the largest layer reduction L/E[layers] "
            "whose cosine Spearman drop vs full depth is at most --max-quality-drop points, and says why."
        ),
    )
    _common_arguments(parser)
    parser.add_argument(
        "--max-quality-drop",
        type=float,
        required=True,
        help="Largest acceptable STS-B Spearman drop, in points (x100)",
    )
    parser.add_argument("--split", choices=["dev", "train", "test"], default="dev", help="Held-out STS-B split")
    parser.add_argument("--out", default="st_leap_calibrate", help="Output folder (default: %(default)s)")
    parser.add_argument("--save-model", default=None, help="Save the model with the picked threshold as its default")
    return parser


def _exit_extra(args: argparse.Namespace) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if args.exit_patience is not None:
        extra["exit_patience"] = args.exit_patience
    if args.exit_min_layer is not None:
        extra["exit_min_layer"] = args.exit_min_layer
    return extra


def _command() -> str:
    return "st-leap " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("st-leap") else " ".join(sys.argv)


def run_evaluate(args: argparse.Namespace) -> int:
    from st_leap import resources
    from st_leap.evaluation._utils import load_model, model_name, num_layers, run_info
    from st_leap.evaluation.mteb import TASKS, run_mteb
    from st_leap.evaluation.sweep import PAPER_THRESHOLDS, decision_table, mark_pareto, plot_sweep

    model_path = resources.resolve_model(args.model)
    model = load_model(model_path)
    name = model_name(model, model_path)
    depth = num_layers(model)
    tasks = [t.strip().lower() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"st-leap evaluate: unknown task(s) {unknown}; choose from {sorted(TASKS)}")
    thresholds = args.thresholds if args.thresholds is not None else list(PAPER_THRESHOLDS)
    settings = ([] if args.no_full_depth else [None]) + [t for t in thresholds if t is not None]
    out = Path(args.out)
    extra = _exit_extra(args)
    runs = []
    for theta in settings:
        print(f"== {name}: exit_threshold={format_theta(theta)} ==", flush=True)
        if args.backend == "mteb":
            summary = run_mteb(
                model,
                tasks,
                exit_threshold=theta,
                source=args.source,
                output_folder=out / "mteb",
                name=name,
                batch_size=args.batch_size,
                **extra,
            )
            scores = {
                TASKS[t]: {
                    "score": 100 * summary["tasks"][TASKS[t]]["main_score"],
                    "metric": summary["tasks"][TASKS[t]]["main_metric"],
                    "exit_stats": summary["tasks"][TASKS[t]]["exit_stats"],
                }
                for t in tasks
            }
        else:
            scores = _beir_backend(model, tasks, theta, args.batch_size, extra)
        runs.append({"theta": theta, "tasks": scores})
        for task, row in scores.items():
            stats = row["exit_stats"]
            print(
                f"  {task:<13} {row['metric']:<16} {row['score']:.2f}  E[layers]={stats['expected_layers']:.3f}  "
                f"exit rate={100 * stats['exit_rate']:.1f}%",
                flush=True,
            )
    result: dict[str, Any] = {
        "measured": f"{', '.join(TASKS[t] for t in tasks)} main scores x100 through {args.backend} at full depth and "
        "per exit threshold, with E[layers] and exit rate per task",
        "model": name,
        "model_path": model_path,
        "num_layers": depth,
        "backend": args.backend,
        "thresholds": thresholds,
        "exit_settings": extra,
        "runs": runs,
        "run_info": run_info(command=_command(), batch_size=args.batch_size),
    }
    if "stsb" in tasks and None in settings and len(settings) > 1:
        rows = []
        full = None
        for run in runs:
            stats = run["tasks"]["STSBenchmark"]["exit_stats"]
            row = {
                "theta": run["theta"],
                "stsb": run["tasks"]["STSBenchmark"]["score"],
                "expected_layers": stats["expected_layers"],
                "layer_reduction": stats["layer_reduction"],
                "layers_saved": 1 - stats["expected_layers"] / stats["num_layers"],
                "exit_rate": stats["exit_rate"],
                "distribution": stats["counts"],
            }
            if run["theta"] is None:
                full = row
            else:
                rows.append(row)
        for row in [full, *rows]:
            row["delta"] = row["stsb"] - full["stsb"]
        mark_pareto(rows)
        result.update({"full": full, "rows": rows, "decision": decision_table(rows, full), "split": "test"})
        plot_sweep(result, out / "evaluate.png")
    write_json(result, out / "evaluate.json")
    (out / "evaluate.md").write_text(evaluate_markdown(result), encoding="utf-8")
    print(evaluate_markdown(result))
    print(
        f"wrote {out / 'evaluate.json'}, {out / 'evaluate.md'}"
        + (f", {out / 'evaluate.png'}" if "rows" in result else "")
    )
    return 0


def _beir_backend(model: Any, tasks: list[str], theta: float | None, batch_size: int, extra: dict) -> dict:
    from st_leap import resources
    from st_leap.evaluation.beir import evaluate_beir
    from st_leap.evaluation.early_exit import EarlyExitEmbeddingSimilarityEvaluator

    scores = {}
    for task in tasks:
        if task == "stsb":
            s1, s2, gold = resources.load_stsb("test")
            evaluator = EarlyExitEmbeddingSimilarityEvaluator(
                s1, s2, gold, exit_threshold=theta, batch_size=batch_size, name="stsb", show_progress_bar=True, **extra
            )
            metrics = evaluator(model)
            scores["STSBenchmark"] = {
                "score": 100 * metrics["stsb_spearman_cosine"],
                "metric": "cosine_spearman",
                "exit_stats": evaluator.exit_stats,
            }
        else:
            name = {"scifact": "SciFact", "nfcorpus": "NFCorpus"}[task]
            res = evaluate_beir(model, resources.beir_dir(task), exit_threshold=theta, batch_size=batch_size, **extra)
            scores[name] = {
                "score": 100 * res["ndcg"]["NDCG@10"],
                "metric": "ndcg_at_10",
                "ndcg": res["ndcg"],
                "exit_stats": res["exit_stats"]["all"],
            }
    return scores


def evaluate_markdown(result: dict[str, Any]) -> str:
    tasks = list(result["runs"][0]["tasks"]) if result["runs"] else []
    lines = [
        f"# st-leap evaluate: {result['model']} ({result['backend']})",
        "",
        f"Command: `{result['run_info']['command']}`",
        "",
        "| theta | " + " | ".join(f"{t} | E[layers] | exit rate" for t in tasks) + " |",
        "| --- | " + " | ".join("---: | ---: | ---:" for _ in tasks) + " |",
    ]
    for run in result["runs"]:
        cells = []
        for t in tasks:
            row = run["tasks"][t]
            cells.append(
                f"{row['score']:.2f} | {row['exit_stats']['expected_layers']:.3f} | "
                f"{100 * row['exit_stats']['exit_rate']:.1f}%"
            )
        lines.append(f"| {format_theta(run['theta'])} | " + " | ".join(cells) + " |")
    if "rows" in result:
        lines += [
            "",
            "## Pareto table (STS-B test)",
            "",
            "| theta | STS-B | delta | E[layers] | layer reduction | exit rate | Pareto |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for row in [result["full"], *result["rows"]]:
            lines.append(
                f"| {format_theta(row['theta'])} | {row['stsb']:.2f} | {row['delta']:+.2f} | {row['expected_layers']:.3f} | "
                f"{row['layer_reduction']:.3f}x | {100 * row['exit_rate']:.1f}% | "
                f"{'' if row['theta'] is None else ('yes' if row['pareto'] else 'no')} |"
            )
        lines += [
            "",
            "## Decision table",
            "",
            "| max STS-B drop | theta | STS-B | delta | E[layers] | layer reduction |",
            "| ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        for row in result["decision"]:
            lines.append(
                f"| {row['max_quality_drop']:g} | {format_theta(row['theta'])} | {row['stsb']:.2f} | {row['delta']:+.2f} | "
                f"{row['expected_layers']:.3f} | {row['layer_reduction']:.3f}x |"
            )
    return "\n".join(lines) + "\n"


def run_calibrate(args: argparse.Namespace) -> int:
    from st_leap import resources
    from st_leap.evaluation._utils import load_model, model_name
    from st_leap.evaluation.sweep import PAPER_THRESHOLDS, calibrate, write_sweep_report

    if not math.isfinite(args.max_quality_drop) or args.max_quality_drop < 0:
        raise SystemExit(f"st-leap calibrate: --max-quality-drop must be >= 0 points, got {args.max_quality_drop}")
    model_path = resources.resolve_model(args.model)
    model = load_model(model_path)
    thresholds = [t for t in (args.thresholds or PAPER_THRESHOLDS) if t is not None]
    result = calibrate(
        model,
        args.max_quality_drop,
        thresholds=thresholds,
        split=args.split,
        batch_size=args.batch_size,
        **_exit_extra(args),
    )
    result["model"] = model_name(model, model_path)
    result["model_path"] = model_path
    result["run_info"]["command"] = _command()
    paths = write_sweep_report(result, args.out, "calibrate")
    picked = result["picked"]
    print(Path(paths["md"]).read_text(encoding="utf-8"))
    print(f"picked exit_threshold={format_theta(picked['theta'])}: {result['reason']}")
    if args.save_model:
        first = model[0]
        first.exit_threshold = picked["theta"]
        first.exit_patience = result["exit_patience"]
        first.exit_min_layer = result["exit_min_layer"]
        model.save(args.save_model)
        print(f"saved the model with default exit_threshold={format_theta(picked['theta'])} to {args.save_model}")
    print(f"wrote {paths['json']}, {paths['md']}, {paths['png']}")
    return 0
