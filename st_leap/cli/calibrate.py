"""``st-leap calibrate``: the fastest measured operating point whose quality drop stays within a budget, among
adaptive exit thresholds and static depths, on held-out STS-B or on the user's own data (``--pairs``, ``--beir``,
``--texts``), through :func:`st_leap.calibrate`."""

from __future__ import annotations

import argparse
from pathlib import Path

from st_leap.cli.common import add_sweep_arguments, command_line, hub_id_of, positive_int, quality_drop


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "calibrate",
        help="Fastest measured operating point (adaptive exit or static depth) whose quality drop on held-out data "
        "stays within a budget.",
        description=(
            "Sweeps theta and every static depth (with and without exit maps when the model has them) on STS-B dev "
            "(held out) or, with --pairs, --beir or --texts, on your data, per role. The points whose quality drop "
            "vs full depth is at most --max-quality-drop points are ranked by layer reduction L/E[layers]; the best "
            "few are timed against full depth on a sample of the role's texts and the one measured fastest is "
            "picked, with the reason. --save-model saves the model with the picks as its defaults, and beside it the "
            "monitoring reference of each role (st-leap monitor). A query encoder for a kept index (st-leap "
            "fit-query-encoder) is calibrated on its query route, with --beir or --texts."
        ),
    )
    add_sweep_arguments(parser, "Comma-separated thetas (default: the paper's grid)")
    parser.add_argument(
        "--max-quality-drop",
        type=quality_drop,
        required=True,
        help="Largest acceptable quality drop vs full depth, in points (x100): STS-B or pairs Spearman, NDCG@10, "
        "or agreement with full depth (texts)",
    )
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        "--pairs", default=None, metavar="FILE", help="Scored pairs (TSV, CSV or JSONL; sentence1, sentence2, score)"
    )
    data.add_argument(
        "--beir", default=None, metavar="FOLDER", help="A BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)"
    )
    data.add_argument("--texts", default=None, metavar="FILE", help="Unlabeled texts, one a line (or a .jsonl with a text field)")
    parser.add_argument(
        "--split",
        choices=["dev", "train", "test"],
        default=None,
        help="Held-out STS-B split (default: dev), or the qrels split of --beir (default: test)",
    )
    parser.add_argument(
        "--time-sample",
        type=positive_int,
        default=256,
        help="Texts timed per role (default: %(default)s)",
    )
    parser.add_argument("--repeats", type=positive_int, default=3, help="Timed rounds (default: %(default)s)")
    parser.add_argument(
        "--timed-candidates",
        type=positive_int,
        default=3,
        help="How many of the best points within the budget are timed with your data (default: %(default)s)",
    )
    parser.add_argument(
        "--reference-size",
        type=int,
        default=1000,
        help="Texts per role kept, with their full-depth embeddings, as the monitoring reference; 0: none "
        "(default: %(default)s)",
    )
    parser.add_argument("--no-static", action="store_true", help="Compare exit thresholds only, no static depths")
    parser.add_argument("--out", default="st_leap_calibrate", help="Output folder (default: %(default)s)")
    parser.add_argument(
        "--save-model", default=None, help="Save the model with the picked operating point as its default"
    )
    parser.add_argument(
        "--role",
        choices=["all", "query", "document", "default"],
        default="all",
        help="With --save-model: the role the pick applies to (query = encode_query); the other roles keep the "
        "model's settings. With --pairs/--texts also the role the texts are encoded in (all: plain encode); with "
        "--beir the roles calibrated (all: query and document) (default: %(default)s)",
    )
    return parser


def where_text(role: str) -> str:
    return "every role" if role == "all" else f"the {role!r} role"


def user_data_spec(args: argparse.Namespace) -> dict[str, str] | None:
    """The ``data`` argument of :func:`st_leap.calibrate` the flags name (``None``: STS-B)."""
    for kind in ("pairs", "beir", "texts"):
        if getattr(args, kind, None):
            return {kind: getattr(args, kind), **({"split": args.split} if kind == "beir" and args.split else {})}
    return None


def run(args: argparse.Namespace) -> int:
    """Calibrate on STS-B or the user's data: read and check it first (a bad file fails before the model loads)."""
    from st_leap import reporting, resources
    from st_leap.evaluation.calibration import calibrate, calibration_markdown
    from st_leap.evaluation.user_data import as_user_data
    from st_leap.exit_policy import PAPER_THRESHOLDS

    data = as_user_data(user_data_spec(args), split=args.split)
    model_path = resources.resolve_model(args.model)
    grid = [t for t in (args.thresholds or PAPER_THRESHOLDS) if t is not None]
    result = calibrate(
        model_path,
        data,
        args.max_quality_drop,
        thresholds=grid,
        static_depths=() if args.no_static else "all",
        role=args.role,
        exit_patience=args.exit_patience,
        exit_min_layer=args.exit_min_layer,
        batch_size=args.batch_size,
        time_sample=args.time_sample,
        repeats=args.repeats,
        timed_candidates=args.timed_candidates,
        reference_size=args.reference_size,
        save_model=args.save_model,
    )
    result["model"] = hub_id_of(model_path) or result["model"]
    result["model_path"] = model_path
    result["run_info"]["command"] = command_line()
    out = Path(args.out)
    json_path = reporting.write_json(result, out / "calibrate.json")
    md_path = reporting.write_text(calibration_markdown(result), out / "calibrate.md")
    if "routes" in result:
        print(
            f"{args.model} is a query encoder for a kept index: calibrated its query route, the part that can exit "
            f"({result['routes']['query']}), as the 'query' role; documents run the index model, unchanged, and "
            "were not calibrated."
        )
    print(md_path.read_text(encoding="utf-8"))
    for role, entry in result["roles"].items():
        picked = entry["picked"]
        print(
            f"picked for {where_text(role)}: {entry['reason'] if picked['kind'] != 'full' else 'full, ' + entry['reason']}"
        )
    if "saved" in result:
        for note in result["saved"]["notes"]:
            print(f"note: {note}")
        print(f"saved the model with the picks as its defaults to {result['saved']['path']}")
        if result["saved"]["references"]:
            print(
                f"saved the monitoring reference of {', '.join(result['saved']['references'])} beside it "
                f"(st-leap monitor {result['saved']['path']} --stream YOUR_TRAFFIC.txt)"
            )
    print(f"wrote {json_path}, {md_path}")
    return 0
