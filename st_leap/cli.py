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
        help="End to end on the packaged all-MiniLM-L6-v2: diagnose, a bounded LEAP retrofit, before/after table.",
        description="1) diagnose the original model, 2) a bounded LEAP retrofit (LEAPLoss, frozen original as "
        "teacher), 3) exit rate, E[layers], STS-B test Spearman and measured encode speed-up before and after.",
    )
    parser.add_argument("--model", default=None, help="Model folder or Hub id (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--out", default="st_leap_demo", help="Output folder (default: %(default)s)")
    parser.add_argument("--train-steps", type=int, default=600, help="LEAP retrofit steps of batch 32; 0 skips training (default: %(default)s)")
    parser.add_argument("--thresholds", type=_thresholds, default=[0.90, 0.93, 0.95], help="Thetas of the table (default: 0.90,0.93,0.95)")
    parser.add_argument("--timing-sentences", type=int, default=512, help="Sentences per timed encode (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="Interleaved timing rounds (default: %(default)s)")
    parser.set_defaults(func=_demo)


def _before_after(model, sentences: list[str], thresholds: list[float], repeats: int) -> list[dict]:
    """Exit rate, E[layers], STS-B test Spearman and measured speed-up at full depth and each theta."""
    from st_leap.diagnostics import time_encode
    from st_leap.training import stsb_spearman

    settings = {"full depth": {"exit_threshold": None}}
    settings.update({f"theta={theta:.2f}": {"exit_threshold": theta} for theta in thresholds})
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
                "stsb": stsb_spearman(model, "test", **settings[name]),
            }
        )
    return rows


def _format_before_after(table: dict[str, list[dict]]) -> str:
    lines = [f"{'model':<9} {'setting':<11} {'exit rate':>9} {'E[layers]':>9} {'L/E[l]':>7} {'measured':>9} {'STS-B':>7}"]
    for name, rows in table.items():
        for r in rows:
            lines.append(
                f"{name:<9} {r['setting']:<11} {r['exit_rate']:>9.1%} {r['expected_layers']:>9.2f} "
                f"{r['layer_reduction']:>6.2f}x {r['speedup']:>8.2f}x {r['stsb']:>7.4f}"
            )
    return "\n".join(lines)


def _demo(args: argparse.Namespace) -> int:
    import torch

    from st_leap.diagnostics import diagnose, format_report, plot
    from st_leap.model import from_pretrained
    from st_leap.resources import resolve_model, stsb_sentences

    out = Path(args.out)
    model_path = resolve_model(args.model)
    sentences = stsb_sentences("test")
    steps = 3 if args.train_steps > 0 else 2
    print(f"[1/{steps}] diagnose {model_path} on the {len(sentences)} STS-B test sentences")
    models = {"original": from_pretrained(model_path)}
    report = {"model_path": model_path, "diagnose": {"original": diagnose(models["original"], sentences)}}
    print(format_report(report["diagnose"]["original"], "original model"))
    plot(report["diagnose"]["original"], out / "original_diagnose.png", title="original model")

    if args.train_steps > 0:
        from st_leap.training import demo_retrofit

        print(f"\n[2/{steps}] LEAP retrofit: {args.train_steps} steps of batch 32, frozen original as teacher")
        models["LEAP"] = demo_retrofit(model_path, output_dir=str(out / "leap-model"), max_steps=args.train_steps)
        report["diagnose"]["LEAP"] = diagnose(models["LEAP"], sentences)
        print(format_report(report["diagnose"]["LEAP"], "LEAP model"))
        plot(report["diagnose"]["LEAP"], out / "leap_diagnose.png", title="LEAP model")

    print(f"\n[{steps}/{steps}] before/after: STS-B test Spearman; speed-up measured on {args.timing_sentences} sentences, "
          f"batch 32, {torch.get_num_threads()} threads, median of {args.repeats} interleaved rounds "
          f"(k=1, l_min={models['original'][0].exit_min_layer})")
    report["table"] = {
        name: _before_after(model, sentences[: args.timing_sentences], args.thresholds, args.repeats)
        for name, model in models.items()
    }
    print(_format_before_after(report["table"]))
    _write_json(report, out / "demo.json")
    print(f"\nwrote {out}/demo.json, the diagnose plots" + (f" and the LEAP model in {out}/leap-model" if args.train_steps else ""))
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
