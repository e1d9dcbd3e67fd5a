"""``st-leap diagnose``: is a model exit-compatible? (paper section 5.2)"""

from __future__ import annotations

import argparse
from pathlib import Path

from st_leap.cli.common import (
    add_exit_arguments,
    add_model_argument,
    hub_id_of,
    plot_if_possible,
    positive_int,
    read_lines,
    thresholds,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "diagnose",
        help="Is a model exit-compatible? Per-layer similarity, exit rates, overhead and a verdict.",
        description="Paper section 5.2 diagnostics: prints a table, writes diagnose.json and diagnose.png. A query "
        "encoder for a kept index (st-leap fit-query-encoder) is diagnosed on its query route.",
    )
    add_model_argument(parser)
    parser.add_argument("--sentences", default=None, help="Text file, one sentence per line (default: STS-B test sentences)")
    parser.add_argument("--max-sentences", type=positive_int, default=None, help="Use only the first N sentences")
    parser.add_argument("--out", default="st_leap_diagnose", help="Output folder (default: %(default)s)")
    parser.add_argument("--thresholds", type=thresholds, default=None, help="Comma-separated thetas (default: the paper's grid)")
    add_exit_arguments(parser, default_help="patience 1, l_min half the depth")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--no-overhead", action="store_true", help="Skip timing the monitoring overhead")
    return parser


def run(args: argparse.Namespace) -> int:
    from st_leap import diagnose, from_pretrained, reporting, resources
    from st_leap.backends import query_side
    from st_leap.exit_policy import PAPER_THRESHOLDS
    from st_leap.model import describe_routes

    grid = [t for t in (args.thresholds or PAPER_THRESHOLDS) if t is not None]
    sentences = read_lines(args.sentences, args.max_sentences) or resources.stsb_sentences("test")[: args.max_sentences]
    model_path = resources.resolve_model(args.model)
    model = from_pretrained(model_path, base_model=hub_id_of(model_path))
    routes = describe_routes(model)
    if routes is not None:
        print(
            f"{args.model} is a query encoder for a kept index: diagnosing its query route, the part that can exit "
            f"({routes['query']}). Documents run the index model, unchanged; diagnose it on its own "
            "(st-leap diagnose INDEX_MODEL) to see whether documents could exit too.",
            flush=True,
        )
        model = query_side(model)
    result = diagnose(
        model,
        sentences,
        thresholds=grid,
        exit_patience=args.exit_patience or 1,
        exit_min_layer=args.exit_min_layer,
        batch_size=args.batch_size,
        measure_overhead=not args.no_overhead,
    )
    result = {"model": args.model or "all-MiniLM-L6-v2 (packaged)", "model_path": model_path, **result}
    if routes is not None:
        result["diagnosed"] = "the query route of a query encoder for a kept index"
        result["routes"] = routes
    result["sentences"] = args.sentences or "STS-B test (unique sentences)"
    out = Path(args.out)
    title = result["model"] + (" (query route)" if routes is not None else "")
    print(reporting.diagnose_report(result, title))
    reporting.write_json(result, out / "diagnose.json")
    plotted = plot_if_possible(
        reporting.plot_diagnose, result, out / "diagnose.png", title=f"st_leap diagnose: {title}"
    )
    print(f"\nwrote {out / 'diagnose.json'}" + (f" and {out / 'diagnose.png'}" if plotted else ""))
    return 0
