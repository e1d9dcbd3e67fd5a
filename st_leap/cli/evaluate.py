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
            "names the exit settings) and a summary evaluate.{json,md,png} with the Pareto and decision tables. A "
            "query encoder for a kept index (st-leap fit-query-encoder) runs once, as saved: queries on its query "
            "route, documents and STS-B on the index model."
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


#: What each role of a query encoder for a kept index reads as, in the printed lines.
ROUTE_NAMES = {
    "query": "queries (query route)",
    "document": "documents (index model)",
    "default": "texts (index model)",
}


def check_router_arguments(args: argparse.Namespace) -> None:
    """A query encoder for a kept index (a Router model) is evaluated once, as saved: refuse what would sweep it."""
    given = {
        "--thresholds": args.thresholds is not None and any(theta is not None for theta in args.thresholds),
        "--exit-patience": args.exit_patience is not None,
        "--exit-min-layer": args.exit_min_layer is not None,
    }
    refused = [flag for flag, present in given.items() if present]
    if refused:
        raise ValueError(
            f"{' and '.join(refused)} {'does' if len(refused) == 1 else 'do'} not apply to a query encoder for a "
            "kept index: it is evaluated once, as saved (queries on its query route at the route's saved setting, "
            "documents on the index model). Leave them out (or pass --thresholds none). To compare operating points "
            "of the query route, run st-leap calibrate on this model with --beir or --texts"
        )
    if args.no_full_depth:
        raise ValueError(
            "--no-full-depth leaves nothing to run for a query encoder for a kept index (it runs once, as saved)"
        )
    if args.backend != "mteb":
        raise ValueError(
            "a query encoder for a kept index is evaluated through mteb (--backend mteb), which sends queries to "
            "encode_query and documents to encode_document"
        )


def run(args: argparse.Namespace) -> int:
    from st_leap import reporting, resources
    from st_leap.evaluation.mteb import TASKS, score_tasks
    from st_leap.evaluation.sweep import PAPER_THRESHOLDS, decision_table, sweep_rows_from_runs
    from st_leap.model import MODEL_DEFAULT, describe_routes, load_model, model_name, num_layers

    model_path = resources.resolve_model(args.model)
    model = load_model(model_path, allow_router=True, base_model=hub_id_of(model_path))
    name = model_name(model, model_path, names=resources.known_local_models())
    routes = describe_routes(model)
    if routes is not None:
        check_router_arguments(args)
        thresholds_: list[Any] = []
        settings: list[Any] = [MODEL_DEFAULT]
        print(
            f"{name} is a query encoder for a kept index, evaluated as saved (no exit thresholds are swept): "
            f"{routes['query']}; {routes['document']}. mteb encodes retrieval queries with encode_query, documents "
            "with encode_document and STS pairs with plain encode, so STS-B scores the index model.",
            flush=True,
        )
    else:
        thresholds_ = args.thresholds if args.thresholds is not None else list(PAPER_THRESHOLDS)
        settings = ([] if args.no_full_depth else [None]) + [t for t in thresholds_ if t is not None]
    out = Path(args.out)
    extra = exit_overrides(args)
    runs = []
    for theta in settings:
        label = "as saved" if theta is MODEL_DEFAULT else f"exit_threshold={reporting.format_theta(theta)}"
        print(f"== {name}: {label} ==", flush=True)
        scores = score_tasks(
            model, args.tasks, exit_threshold=theta, backend=args.backend, source=args.source,
            output_folder=out / "mteb", name=name, batch_size=args.batch_size, **extra,
        )
        entry: dict[str, Any] = {"theta": theta, "tasks": scores}
        if routes is not None:  # one run at the saved settings (the query route's own, the index model's full depth)
            entry.update(theta=None, setting="as saved")
        runs.append(entry)
        for task, row in scores.items():
            stats = row["exit_stats"]
            if routes is None:
                layers = f"E[layers]={stats['expected_layers']:.3f}  exit rate={100 * stats['exit_rate']:.1f}%"
            else:
                layers = "  ".join(
                    f"{ROUTE_NAMES[role]} E[layers]={role_stats['expected_layers']:.3f}"
                    for role, role_stats in row["exit_stats_by_role"].items()
                )
            print(f"  {task:<13} {row['metric']:<16} {row['score']:.2f}  {layers}", flush=True)
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
    if routes is not None:
        result["measured"] = (
            f"{', '.join(TASKS[t] for t in args.tasks)} main scores x100 through mteb of a query encoder for a kept "
            "index, as saved: retrieval queries through encode_query (the query route), documents through "
            "encode_document and STS pairs through plain encode (the index model); E[layers] per role"
        )
        result["routes"] = routes
        result["num_layers"] = {role: num_layers(model, role) for role in ("query", "document")}
    if "stsb" in args.tasks and None in settings and len(settings) > 1:
        full, rows = sweep_rows_from_runs(runs)
        result.update({"full": full, "rows": rows, "decision": decision_table(rows, full), "split": "test"})
        reporting.plot_sweep(result, out / "evaluate.png")
    reporting.write_json(result, out / "evaluate.json")
    reporting.write_text(reporting.evaluate_markdown(result), out / "evaluate.md")
    print(reporting.evaluate_markdown(result))
    print(f"wrote {out / 'evaluate.json'}, {out / 'evaluate.md'}" + (f", {out / 'evaluate.png'}" if "rows" in result else ""))
    return 0
