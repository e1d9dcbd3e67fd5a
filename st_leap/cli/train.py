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
    return parser


def run(args: argparse.Namespace) -> int:
    from st_leap.training import TrainConfig, train

    config = TrainConfig.from_file(args.config)  # validated before any model loads
    if args.output_dir is not None:
        config.output_dir = args.output_dir
    result = train(config)
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
