"""``st-leap calibrate``: the largest speed-up whose quality drop on held-out STS-B stays within a budget, among
adaptive exit thresholds and static depths."""

from __future__ import annotations

import argparse
from pathlib import Path

from st_leap.cli.common import add_sweep_arguments, command_line, exit_overrides, quality_drop


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "calibrate",
        help="Largest speed-up (adaptive exit or static depth) whose STS-B drop on held-out data stays within a budget.",
        description=(
            "Sweeps theta and every static depth on STS-B dev (held out), picks the operating point with the largest "
            "layer reduction L/E[layers] whose cosine Spearman drop vs full depth is at most --max-quality-drop "
            "points, and says why, with the runner-up and the margin."
        ),
    )
    add_sweep_arguments(parser, "Comma-separated thetas (default: the paper's grid)")
    parser.add_argument(
        "--max-quality-drop", type=quality_drop, required=True, help="Largest acceptable STS-B Spearman drop, in points (x100)"
    )
    parser.add_argument("--split", choices=["dev", "train", "test"], default="dev", help="Held-out STS-B split")
    parser.add_argument("--no-static", action="store_true", help="Compare exit thresholds only, no static depths")
    parser.add_argument("--out", default="st_leap_calibrate", help="Output folder (default: %(default)s)")
    parser.add_argument("--save-model", default=None, help="Save the model with the picked operating point as its default")
    parser.add_argument(
        "--role",
        choices=["all", "query", "document", "default"],
        default="all",
        help="With --save-model: the role the pick applies to (query = encode_query); the other roles keep the "
        "model's settings (default: %(default)s)",
    )
    return parser


def where_text(role: str) -> str:
    return "every role" if role == "all" else f"the {role!r} role"


def run(args: argparse.Namespace) -> int:
    from st_leap import reporting, resources
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
        split=args.split,
        batch_size=args.batch_size,
        static_depths=() if args.no_static else "all",
        **exit_overrides(args),
    )
    result["model"] = model_name(model, model_path)
    result["model_path"] = model_path
    result["run_info"]["command"] = command_line()
    paths = reporting.write_sweep_report(result, args.out, "calibrate")
    picked = result["picked"]
    print(Path(paths["md"]).read_text(encoding="utf-8"))
    print(f"picked {reporting.point_label(picked)}: {result['reason']}")
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
            f"STS-B {args.split} Spearman, full depth": f"{full['stsb']:.2f}",
            f"STS-B {args.split} Spearman, at the operating point": f"{picked['stsb']:.2f}",
            "E[layers] (of the encoder's)": f"{picked['expected_layers']:.2f} of {module.num_layers}",
            "layer reduction L / E[layers]": f"{picked['layer_reduction']:.2f}x (layers, not measured wall-clock time)",
            "quality budget": f"{args.max_quality_drop} points of Spearman x 100",
        }
        reporting.save_model(model, args.save_model)  # written aside, then renamed into place
        where = where_text(args.role)
        print(f"saved the model with {reporting.point_label(picked)} as its default for {where} to {args.save_model}")
    print(f"wrote {paths['json']}, {paths['md']}, {paths['png']}")
    return 0
