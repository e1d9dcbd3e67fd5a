"""``st-leap evaluate``: STS-B / SciFact / NFCorpus through mteb (or beir) at full depth and per exit threshold."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from st_leap.cli.common import TASK_NAMES, add_sweep_arguments, command_line, exit_overrides, hub_id_of, task_list


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="STS-B / SciFact / NFCorpus through mteb (or beir) at full depth and per exit threshold.",
        description=(
            "Runs the tasks at full depth and at every threshold, writes mteb's own result files (model metadata "
            "names the exit settings) and a summary evaluate.{json,md,png} with the Pareto and decision tables."
        ),
    )
    add_sweep_arguments(parser, "Comma-separated thetas; 'none' = full depth (default: the paper's grid)")
    parser.add_argument("--tasks", type=task_list, default=list(TASK_NAMES), help="Comma-separated: stsb, scifact, nfcorpus")
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


def run(args: argparse.Namespace) -> int:
    from st_leap import reporting, resources
    from st_leap.evaluation.mteb import TASKS, score_tasks
    from st_leap.evaluation.sweep import PAPER_THRESHOLDS, decision_table, sweep_rows_from_runs
    from st_leap.model import load_model, model_name, num_layers

    thresholds_ = args.thresholds if args.thresholds is not None else list(PAPER_THRESHOLDS)
    settings = ([] if args.no_full_depth else [None]) + [t for t in thresholds_ if t is not None]
    model_path = resources.resolve_model(args.model)
    model = load_model(model_path, base_model=hub_id_of(model_path))
    name = model_name(model, model_path, names=resources.known_local_models())
    out = Path(args.out)
    extra = exit_overrides(args)
    runs = []
    for theta in settings:
        print(f"== {name}: exit_threshold={reporting.format_theta(theta)} ==", flush=True)
        scores = score_tasks(
            model, args.tasks, exit_threshold=theta, backend=args.backend, source=args.source,
            output_folder=out / "mteb", name=name, batch_size=args.batch_size, **extra,
        )
        runs.append({"theta": theta, "tasks": scores})
        for task, row in scores.items():
            stats = row["exit_stats"]
            print(
                f"  {task:<13} {row['metric']:<16} {row['score']:.2f}  E[layers]={stats['expected_layers']:.3f}  "
                f"exit rate={100 * stats['exit_rate']:.1f}%",
                flush=True,
            )
    result: dict[str, Any] = {
        "measured": f"{', '.join(TASKS[t] for t in args.tasks)} main scores x100 through {args.backend} at full depth "
        "and per exit threshold, with E[layers] and exit rate per task",
        "model": name,
        "model_path": model_path,
        "num_layers": num_layers(model),
        "backend": args.backend,
        "thresholds": thresholds_,
        "exit_settings": extra,
        "runs": runs,
        "run_info": reporting.run_info(command=command_line(), batch_size=args.batch_size),
    }
    if "stsb" in args.tasks and None in settings and len(settings) > 1:
        full, rows = sweep_rows_from_runs(runs)
        result.update({"full": full, "rows": rows, "decision": decision_table(rows, full), "split": "test"})
        reporting.plot_sweep(result, out / "evaluate.png")
    reporting.write_json(result, out / "evaluate.json")
    reporting.write_text(reporting.evaluate_markdown(result), out / "evaluate.md")
    print(reporting.evaluate_markdown(result))
    print(f"wrote {out / 'evaluate.json'}, {out / 'evaluate.md'}" + (f", {out / 'evaluate.png'}" if "rows" in result else ""))
    return 0
