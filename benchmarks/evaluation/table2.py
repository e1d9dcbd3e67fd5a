"""Paper Table 2 at our scale: how a standard (non-LEAP) model behaves under early exit, across theta.

For each model: STS-B cosine Spearman at full depth and per theta (0.90 ... 0.99), E[layers], layer reduction,
exit rate, exit-layer distribution and NN@10 consistency vs full depth; decision table. Writes
``benchmarks/results/evaluation/<name>.{json,md,png}``. Works for any model path, so it reruns on a LEAP-trained model
(paper Tables 3-5).

    HF_HUB_OFFLINE=1 python -m benchmarks.evaluation.table2 --model minilm --name table2_minilm_stsb_test
    HF_HUB_OFFLINE=1 python -m benchmarks.evaluation.table2 --model mpnet --method replay --name table2_mpnet_stsb_test
    HF_HUB_OFFLINE=1 python -m benchmarks.evaluation.table2 --model PATH --name table5_leap_stsb_test
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks._common import command_line, results_dir
from st_leap import resources
from st_leap.evaluation.sweep import PAPER_THRESHOLDS, sweep
from st_leap.model import load_model, model_name
from st_leap.reporting import write_sweep_report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", help="'minilm', 'mpnet', a local path or a Hub id")
    parser.add_argument("--thresholds", default=",".join(f"{t:g}" for t in PAPER_THRESHOLDS))
    parser.add_argument("--split", default="test", choices=["train", "dev", "test"])
    parser.add_argument("--exit-patience", type=int, default=None)
    parser.add_argument("--exit-min-layer", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--method",
        choices=["encode", "replay"],
        default="encode",
        help="encode: one early-exit encode per theta; replay: one full-depth pass, exit rule replayed per theta",
    )
    parser.add_argument("--name", required=True, help="result file stem under --out")
    parser.add_argument("--out", default=None, help="output folder (default: benchmarks/results/evaluation)")
    args = parser.parse_args(argv)

    path = resources.resolve_model(args.model)
    model = load_model(path)
    extra = {}
    if args.exit_patience is not None:
        extra["exit_patience"] = args.exit_patience
    if args.exit_min_layer is not None:
        extra["exit_min_layer"] = args.exit_min_layer
    result = sweep(
        model,
        [float(t) for t in args.thresholds.split(",")],
        split=args.split,
        batch_size=args.batch_size,
        method=args.method,
        **extra,
    )
    result["model"] = model_name(model, path)
    result["model_path"] = str(path)
    result["run_info"]["command"] = command_line("benchmarks.evaluation.table2", argv)
    paths = write_sweep_report(result, args.out or results_dir("evaluation"), args.name)
    print(Path(paths["md"]).read_text(encoding="utf-8"))
    return result


if __name__ == "__main__":
    main()
