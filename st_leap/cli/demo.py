"""``st-leap demo``: end to end on the packaged all-MiniLM-L6-v2: diagnose, a bounded LEAP retrofit, and a
before/after table of exit rate, E[layers], STS-B and measured speed-up."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from st_leap.cli.common import plot_if_possible, positive_int, thresholds


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="End to end on the packaged all-MiniLM-L6-v2: diagnose, a bounded LEAP retrofit, before/after table.",
        description="1) diagnose the original model, 2) a bounded LEAP retrofit (LEAPLoss, frozen original as "
        "teacher), 3) exit rate, E[layers], STS-B test Spearman and measured encode speed-up before and after.",
    )
    parser.add_argument("--model", default=None, help="Model folder or Hub id (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--out", default="st_leap_demo", help="Output folder (default: %(default)s)")
    parser.add_argument("--train-steps", type=int, default=600, help="LEAP retrofit steps of batch 32; 0 skips training (default: %(default)s)")
    parser.add_argument("--thresholds", type=thresholds, default=[0.90, 0.93, 0.95], help="Thetas of the table (default: 0.90,0.93,0.95)")
    parser.add_argument("--timing-sentences", type=positive_int, default=512, help="Sentences per timed encode (default: %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="Interleaved timing rounds (default: %(default)s)")
    return parser


def demo_config(model_path: str, output_dir: str, max_steps: int, **overrides: Any) -> Any:
    """The demo's retrofit: the frozen original as precomputed teacher, ``max_steps`` steps of batch 32 (lr 3e-4,
    10% warm-up, length-grouped batches), the recipe's LEAPLoss with the teacher as the only target
    (``student_weight=0``; the best 300-step probe, ``benchmarks/results/train_recipe/train_recipe_probes.md``), exit
    defaults theta=0.95, l_min=3, no checkpoints (``save_steps=None``: a run of minutes needs no 0.27 GB
    checkpoints). ``overrides`` are :class:`~st_leap.training.TrainConfig` fields."""
    from st_leap.training import TrainConfig

    settings: dict[str, Any] = {
        "learning_rate": 3e-4,
        "loss": {"student_weight": 0.0},
        "warmup_steps": max(1, max_steps // 10),
        "group_by_length": True,
        "save_steps": None,
    }
    settings.update(overrides)
    return TrainConfig(
        model=model_path, teacher=model_path, teacher_mode="precomputed", output_dir=output_dir, max_steps=max_steps,
        **settings,
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from st_leap import diagnose, from_pretrained, reporting, resources
    from st_leap.evaluation.sweep import timed_operating_points

    grid = [t for t in args.thresholds if t is not None]
    out = Path(args.out)
    model_path = resources.resolve_model(args.model)
    sentences = resources.stsb_sentences("test")
    steps = 3 if args.train_steps > 0 else 2
    print(f"[1/{steps}] diagnose {model_path} on the {len(sentences)} STS-B test sentences")
    models = {"original": from_pretrained(model_path)}
    report: dict[str, Any] = {"model_path": model_path, "diagnose": {"original": diagnose(models["original"], sentences)}}
    print(reporting.diagnose_report(report["diagnose"]["original"], "original model"))
    plot_if_possible(reporting.plot_diagnose, report["diagnose"]["original"], out / "original_diagnose.png", title="original model")

    if args.train_steps > 0:
        from st_leap.training import train

        print(f"\n[2/{steps}] LEAP retrofit: {args.train_steps} steps of batch 32, frozen original as teacher")
        models["LEAP"] = train(demo_config(model_path, str(out / "leap-model"), args.train_steps)).model
        report["diagnose"]["LEAP"] = diagnose(models["LEAP"], sentences)
        print(reporting.diagnose_report(report["diagnose"]["LEAP"], "LEAP model"))
        plot_if_possible(reporting.plot_diagnose, report["diagnose"]["LEAP"], out / "leap_diagnose.png", title="LEAP model")

    print(f"\n[{steps}/{steps}] before/after: STS-B test Spearman; speed-up measured on {args.timing_sentences} sentences, "
          f"batch 32, {torch.get_num_threads()} threads, median of {args.repeats} interleaved rounds "
          f"(k=1, l_min={models['original'][0].exit_min_layer})")
    report["table"] = {
        name: timed_operating_points(model, sentences[: args.timing_sentences], grid, args.repeats)
        for name, model in models.items()
    }
    print(reporting.operating_points_table(report["table"]))
    reporting.write_json(report, out / "demo.json")
    print(f"\nwrote {out}/demo.json, the diagnose plots" + (f" and the LEAP model in {out}/leap-model" if args.train_steps else ""))
    print(NEXT_STEPS.format(model=f"{out}/leap-model" if args.train_steps else model_path))
    return 0


NEXT_STEPS = """
Next, on your own data (MODEL: {model}, or your own model folder or Hub id):
  st-leap calibrate MODEL --texts your_texts.txt --max-quality-drop 1         # pick exit or static depth on your texts
  st-leap calibrate MODEL --beir your_beir_folder --max-quality-drop 1        # the same, judged by retrieval
  st-leap fit-maps MODEL --texts your_texts.txt --out DIR                     # fit exit maps on your texts
  st-leap export MODEL --backend onnx --quantize int8                         # the fastest full-depth CPU path
What to use for your case, and what each option measured: README.md, "What to use for your case"."""
