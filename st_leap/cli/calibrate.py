"""``st-leap calibrate``: the largest speed-up whose quality drop stays within a budget, among adaptive exit
thresholds and static depths, on held-out STS-B or on the user's own data (``--pairs``, ``--beir``, ``--texts``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from st_leap.cli.common import (
    add_sweep_arguments,
    command_line,
    exit_overrides,
    hub_id_of,
    positive_int,
    quality_drop,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "calibrate",
        help="Largest speed-up (adaptive exit or static depth) whose quality drop on held-out data stays within a budget.",
        description=(
            "Sweeps theta and every static depth on STS-B dev (held out), picks the operating point with the largest "
            "layer reduction L/E[layers] whose cosine Spearman drop vs full depth is at most --max-quality-drop "
            "points, and says why, with the runner-up and the margin. With --pairs, --beir or --texts it calibrates "
            "on your data instead, per role (and with and without exit maps when the model has them), and picks "
            "the point measured fastest (wall-clock, on a sample of your texts) within the budget."
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
    data.add_argument("--texts", default=None, metavar="FILE", help="Unlabeled texts, one a line")
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


def run_user_data(args: argparse.Namespace, spec: dict[str, str]) -> int:
    """Calibrate on the user's data: read and check it first (a bad file fails before the model loads)."""
    from st_leap import reporting, resources
    from st_leap.evaluation.calibration import calibrate, calibration_markdown
    from st_leap.evaluation.sweep import PAPER_THRESHOLDS
    from st_leap.evaluation.user_data import as_user_data

    data = as_user_data(spec)
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
        save_model=args.save_model,
    )
    result["model"] = hub_id_of(model_path) or result["model"]
    result["model_path"] = model_path
    result["run_info"]["command"] = command_line()
    out = Path(args.out)
    json_path = reporting.write_json(result, out / "calibrate.json")
    md_path = reporting.write_text(calibration_markdown(result), out / "calibrate.md")
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
    print(f"wrote {json_path}, {md_path}")
    return 0


def run(args: argparse.Namespace) -> int:
    spec = user_data_spec(args)
    if spec is not None:
        return run_user_data(args, spec)
    from st_leap import reporting, resources
    from st_leap.evaluation.calibration import measured_speedup
    from st_leap.evaluation.sweep import PAPER_THRESHOLDS, calibrate
    from st_leap.exit_policy import with_role
    from st_leap.model import as_early_exit, load_model, model_name

    model_path = resources.resolve_model(args.model)
    model = load_model(model_path)
    grid = [t for t in (args.thresholds or PAPER_THRESHOLDS) if t is not None]
    result = calibrate(
        model,
        args.max_quality_drop,
        thresholds=grid,
        split=args.split or "dev",
        batch_size=args.batch_size,
        static_depths=() if args.no_static else "all",
        **exit_overrides(args),
    )
    result["model"] = model_name(model, model_path)
    result["model_path"] = model_path
    result["run_info"]["command"] = command_line()
    picked = result["picked"]
    sentences = resources.stsb_sentences(result["split"])
    timing = measured_speedup(
        model,
        sentences,
        picked,
        batch_size=args.batch_size,
        time_sample=args.time_sample,
        repeats=args.repeats,
        exit_patience=result["exit_patience"],
        exit_min_layer=result["exit_min_layer"],
    )
    picked.update(measured_speedup=timing["measured_speedup"], speedup_band=timing["speedup_band"])
    result["timing"] = timing
    paths = reporting.write_sweep_report(result, args.out, "calibrate")
    print(Path(paths["md"]).read_text(encoding="utf-8"))
    print(f"picked {reporting.point_label(picked)}: {result['reason']}")
    if timing["num_texts"]:
        band = timing["speedup_band"]
        print(
            f"measured speed-up of the pick: {timing['measured_speedup']:.2f}x full depth (band {band[0]:.2f}-"
            f"{band[1]:.2f}x, {timing['repeats']} round(s) on {timing['num_texts']} STS-B {result['split']} sentences)"
        )
    if args.save_model:
        module = model[0]
        as_early_exit(
            model,
            exit_threshold=with_role(module.exit_threshold, args.role, picked["theta"]),
            truncate_layers=with_role(module.truncate_layers, args.role, picked.get("truncate_layers")),
            exit_patience=with_role(module.exit_patience, args.role, result["exit_patience"]),
            exit_min_layer=with_role(module.exit_min_layer, args.role, result["exit_min_layer"]),
        )
        full = result["full"]
        model.model_card_data.leap_measurements = {
            "calibrated operating point": f"{reporting.point_label(picked)} ({where_text(args.role)})",
            f"STS-B {result['split']} Spearman, full depth": f"{full['stsb']:.2f}",
            f"STS-B {result['split']} Spearman, at the operating point": f"{picked['stsb']:.2f}",
            "E[layers] (of the encoder's)": f"{picked['expected_layers']:.2f} of {module.num_layers}",
            "layer reduction L / E[layers]": f"{picked['layer_reduction']:.2f}x (layers)",
            "measured speed-up (wall-clock vs full depth)": f"{picked['measured_speedup']:.2f}x"
            + (
                f" on {timing['num_texts']} STS-B {result['split']} sentences"
                if timing["num_texts"]
                else " (full depth)"
            ),
            "quality budget": f"{args.max_quality_drop} points of Spearman x 100",
        }
        reporting.save_model(model, args.save_model)  # written aside, then renamed into place
        where = where_text(args.role)
        print(f"saved the model with {reporting.point_label(picked)} as its default for {where} to {args.save_model}")
    print(f"wrote {paths['json']}, {paths['md']}, {paths['png']}")
    return 0
