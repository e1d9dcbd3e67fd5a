"""The ``st-leap`` command line: one ``_add_<cmd>_parser`` and one ``_<cmd>(args)`` per subcommand.

Every command works offline on the packaged model (``minilm``) and the shared data folder (``$ST_LEAP_DATA``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _thresholds(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"thresholds must be comma-separated numbers, got {text!r}") from error


def _read_sentences(path: str | None, limit: int | None) -> list[str]:
    from st_leap.resources import stsb_sentences

    if path is None:
        sentences = stsb_sentences("test")
    else:
        with open(path, encoding="utf-8") as f:
            sentences = [line.strip() for line in f if line.strip()]
    return sentences[:limit] if limit else sentences


def _write_json(data: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------- diagnose
def _add_diagnose_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diagnose",
        help="Is a model exit-compatible? Per-layer similarity, exit rates, overhead and a verdict.",
        description="Paper section 5.2 diagnostics: prints a table, writes diagnose.json and diagnose.png.",
    )
    parser.add_argument("model", nargs="?", default=None, help="Model folder, Hub id, or 'minilm'/'mpnet' (default: minilm)")
    parser.add_argument("--sentences", default=None, help="Text file, one sentence per line (default: STS-B test sentences)")
    parser.add_argument("--max-sentences", type=int, default=None, help="Use only the first N sentences")
    parser.add_argument("--out", default="st_leap_diagnose", help="Output folder (default: %(default)s)")
    parser.add_argument("--thresholds", type=_thresholds, default=None, help="Comma-separated thetas (default: 0.90,0.93,0.95,0.97,0.99)")
    parser.add_argument("--exit-patience", type=int, default=1, help="k of the exit rule (default: 1)")
    parser.add_argument("--exit-min-layer", type=int, default=None, help="l_min of the exit rule (default: half the depth)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-overhead", action="store_true", help="Skip timing the monitoring overhead")
    parser.set_defaults(func=_diagnose)


def _diagnose(args: argparse.Namespace) -> int:
    from st_leap.diagnostics import DEFAULT_THRESHOLDS, diagnose, format_report, plot
    from st_leap.model import from_pretrained
    from st_leap.resources import resolve_model

    model_path = resolve_model(args.model)
    model = from_pretrained(model_path)
    sentences = _read_sentences(args.sentences, args.max_sentences)
    result = diagnose(
        model,
        sentences,
        thresholds=args.thresholds or DEFAULT_THRESHOLDS,
        exit_patience=args.exit_patience,
        exit_min_layer=args.exit_min_layer,
        batch_size=args.batch_size,
        measure_overhead=not args.no_overhead,
    )
    result = {"model": args.model or "all-MiniLM-L6-v2 (packaged)", "model_path": model_path, **result}
    result["sentences"] = args.sentences or "STS-B test (unique sentences)"
    out = Path(args.out)
    print(format_report(result, result["model"]))
    _write_json(result, out / "diagnose.json")
    plot(result, out / "diagnose.png", title=f"st_leap diagnose: {result['model']}")
    print(f"\nwrote {out / 'diagnose.json'} and {out / 'diagnose.png'}")
    return 0


# --------------------------------------------------------------------------------------------------------- demo
def _add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="End to end on the packaged all-MiniLM-L6-v2: diagnose, then measured speed-up per threshold.",
    )
    parser.add_argument("--model", default=None, help="Model folder or Hub id (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--out", default="st_leap_demo", help="Output folder (default: %(default)s)")
    parser.add_argument("--max-sentences", type=int, default=None, help="Use only the first N STS-B test sentences")
    parser.add_argument("--timing-sentences", type=int, default=512, help="Sentences per timed encode (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="Interleaved timing rounds (default: %(default)s)")
    parser.set_defaults(func=_demo)


def _speedup_table(model, sentences: list[str], repeats: int) -> list[dict]:
    from st_leap.diagnostics import time_encode

    settings = {"full depth": {"exit_threshold": None}}
    for theta in (0.90, 0.95):
        settings[f"theta={theta:.2f}"] = {"exit_threshold": theta}
    timed = time_encode(model, sentences, settings, batch_size=32, repeats=repeats)
    rows = []
    for name, row in timed.items():
        stats = row["exit_stats"]
        rows.append(
            {
                "setting": name,
                "exit_rate": stats["exit_rate"],
                "expected_layers": stats["expected_layers"],
                "layer_reduction": stats["layer_reduction"],
                "speedup": 1.0 / row["ratio_to_reference"],
                "seconds_median": row["seconds_median"],
            }
        )
    return rows


def _format_speedup(rows: list[dict]) -> str:
    lines = [f"{'setting':<12} {'exit rate':>10} {'E[layers]':>10} {'L/E[l]':>8} {'measured':>9}"]
    for r in rows:
        lines.append(
            f"{r['setting']:<12} {r['exit_rate']:>10.1%} {r['expected_layers']:>10.2f} "
            f"{r['layer_reduction']:>7.2f}x {r['speedup']:>8.2f}x"
        )
    return "\n".join(lines)


def _demo(args: argparse.Namespace) -> int:
    import torch

    from st_leap.diagnostics import diagnose, format_report, plot
    from st_leap.model import from_pretrained
    from st_leap.resources import resolve_model, stsb_sentences

    out = Path(args.out)
    model_path = resolve_model(args.model)
    print(f"[1/2] diagnose {model_path} on the STS-B test sentences")
    model = from_pretrained(model_path)
    sentences = stsb_sentences("test")[: args.max_sentences] if args.max_sentences else stsb_sentences("test")
    result = diagnose(model, sentences)
    print(format_report(result, "original model"))
    plot(result, out / "original_diagnose.png", title="original model")

    print(f"\n[2/2] measured encode speed-up ({args.timing_sentences} sentences, batch 32, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved rounds; exit rule k=1, l_min={model[0].exit_min_layer})")
    speed = _speedup_table(model, sentences[: args.timing_sentences], args.repeats)
    print(_format_speedup(speed))
    _write_json({"model_path": model_path, "original": {"diagnose": result, "speedup": speed}}, out / "demo.json")
    print(f"\nwrote {out / 'demo.json'} and {out / 'original_diagnose.png'}")
    return 0


# -------------------------------------------------------------------------------------------------------- train
def _add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="LEAP training (LEAPLoss in SentenceTransformerTrainer) from a JSON/YAML config file.",
        description="Keys: see st_leap.training.TrainConfig and docs/training.md. Works under torchrun.",
    )
    parser.add_argument("--config", required=True, help="Training config file (.json, .yaml or .yml)")
    parser.add_argument("--output-dir", default=None, help="Override the config's output_dir")
    parser.add_argument("--measure", action="store_true", help="After training, measure exits and STS-B test")
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from st_leap.training import main_train

    summary = main_train(args.config, output_dir=args.output_dir, measure_after=args.measure)
    print(json.dumps(summary, indent=2))
    return 0


# ------------------------------------------------------------------------------------------- evaluate, calibrate
def _add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    from st_leap.evaluation._cli import add_evaluate_parser

    add_evaluate_parser(subparsers).set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from st_leap.evaluation._cli import run_evaluate

    return run_evaluate(args)


def _add_calibrate_parser(subparsers: argparse._SubParsersAction) -> None:
    from st_leap.evaluation._cli import add_calibrate_parser

    add_calibrate_parser(subparsers).set_defaults(func=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from st_leap.evaluation._cli import run_calibrate

    return run_calibrate(args)


# --------------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="st-leap", description="LEAP early exit for sentence-transformers.")
    from st_leap.version import __version__

    parser.add_argument("--version", action="version", version=f"st-leap {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_parser in _PARSERS:
        add_parser(subparsers)
    return parser


_PARSERS = [_add_demo_parser, _add_diagnose_parser, _add_train_parser, _add_evaluate_parser, _add_calibrate_parser]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:  # bad input: a message, not a traceback
        print(f"st-leap {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
