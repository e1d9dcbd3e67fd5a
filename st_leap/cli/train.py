"""``st-leap train``: LEAP training from a JSON or YAML config (keys: :class:`st_leap.training.TrainConfig`)."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="LEAP training (LEAPLoss in SentenceTransformerTrainer) from a JSON/YAML config file.",
        description="Keys: see st_leap.training.TrainConfig and docs/training.md. Works under torchrun.",
    )
    parser.add_argument("--config", required=True, help="Training config file (.json, .yaml or .yml)")
    parser.add_argument("--output-dir", default=None, help="Override the config's output_dir")
    parser.add_argument("--measure", action="store_true", help="After training, measure exits and STS-B test")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="Continue an interrupted run: from the newest checkpoint in OUTPUT_DIR/checkpoints, or from CHECKPOINT",
    )
    parser.add_argument(
        "--save-steps", type=int, default=None, help="Override save_steps (checkpoint every N steps; 0: none)"
    )
    parser.add_argument(
        "--save-minutes", type=float, default=None, help="Override save_minutes (also checkpoint every N minutes)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from st_leap.training import TrainConfig, train

    config = TrainConfig.from_file(args.config)  # validated before any model loads
    overrides = {
        "output_dir": args.output_dir,
        "resume": args.resume,
        "save_steps": args.save_steps,
        "save_minutes": args.save_minutes,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.save_steps == 0:
        overrides["save_steps"] = None
    # Rebuilt from its dict so the overrides are validated like the file's keys.
    config = TrainConfig.from_dict({**config.to_dict(), **overrides})
    evaluator = None
    if config.eval_steps is not None:
        from st_leap.evaluation.dev import dev_evaluator

        evaluator = dev_evaluator(config)
    result = train(config, evaluator=evaluator)
    summary = {"output_dir": config.output_dir, "steps": result.steps, "train_seconds": result.train_seconds}
    if args.measure:
        from st_leap.evaluation import measure

        summary["metrics"] = measure(
            result.model,
            thresholds=(config.exit_threshold or 0.95,),
            min_layer=config.exit_min_layer,
            per_layer_stsb=False,
        )
    print(json.dumps(summary, indent=2))
    return 0
