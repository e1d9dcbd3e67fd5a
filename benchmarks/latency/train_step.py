"""Training cost: time per optimizer step of LEAPLoss against plain final-layer distillation (issue 5, item 4).

Same student (all-MiniLM-L6-v2), same live frozen teacher, same batch, same AdamW step; the settings run
interleaved after warm-up and the ratio is the median of per-round ratios to the first setting:

- ``MSELoss (ST)``: sentence-transformers' own distillation loss, labels = the teacher's embeddings of the batch
  computed in the step (as a live teacher does);
- ``LEAPLoss final only``: LEAPLoss with every weight but the final-layer term at 0;
- ``LEAPLoss default``: LEAPLoss with its default terms (the recipe's loss);
- ``LEAPLoss paper preset``: ``preset="paper"``.

The paper reports +20% per step for LEAP over plain distillation.

Example::

    HF_HUB_OFFLINE=1 python -m benchmarks.latency.train_step --threads 2 --batch-size 32 --repeats 10
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MSELoss
from sentence_transformers.util import batch_to_device

from benchmarks._common import command_line, meta_info, write_result
from st_leap.losses import LEAPLoss
from st_leap.resources import load_sentences, resolve_model


def make_step(loss: torch.nn.Module, features: dict, teacher: SentenceTransformer | None):
    optimizer = torch.optim.AdamW([p for p in loss.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        optimizer.zero_grad()
        labels = None
        if teacher is not None:
            with torch.no_grad():
                labels = teacher(dict(features))["sentence_embedding"]
        out = loss([dict(features)], labels)
        total = sum(out.values()) if isinstance(out, dict) else out
        total.backward()
        optimizer.step()

    return step


def step_parser(doc: str, out: str) -> argparse.ArgumentParser:
    """The arguments every training-step benchmark takes (model, batch size, max length, threads, output stem)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=out)
    return parser


def student_and_teacher(args: argparse.Namespace) -> tuple[str, SentenceTransformer, SentenceTransformer]:
    """Set the thread count; load the model twice: a student, and a frozen teacher in eval mode."""
    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    student = SentenceTransformer(path, device="cpu")
    student.max_seq_length = args.max_seq_length
    teacher = SentenceTransformer(path, device="cpu")
    teacher.max_seq_length = args.max_seq_length
    teacher.eval().requires_grad_(False)
    return path, student, teacher


def write_outputs(out: str, result: dict, lines: list[str]) -> None:
    """``<out>.json`` and ``<out>.md``; print the markdown."""
    write_result(out, result, "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = step_parser(__doc__, "benchmarks/results/latency/train_step")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    path, base, teacher = student_and_teacher(args)
    texts = load_sentences(args.batch_size, seed=0)
    features = batch_to_device(base.preprocess(texts), "cpu")

    students = {}
    steps = {}
    zero = dict(intermediate_weight=0.0, exit_weight=0.0, contrastive_weight=0.0, anchor_weight=0.0, adjacent_weight=0.0)
    configs = {
        "MSELoss (ST)": lambda m: (MSELoss(m), teacher),
        "LEAPLoss final only": lambda m: (LEAPLoss(m, teacher=teacher, final_weight=1.0, **zero), None),
        "LEAPLoss default": lambda m: (LEAPLoss(m, teacher=teacher), None),
        "LEAPLoss paper preset": lambda m: (LEAPLoss(m, teacher=teacher, preset="paper", total_steps=1000), None),
    }
    for name, build in configs.items():
        students[name] = copy.deepcopy(base).train()
        loss, label_teacher = build(students[name])
        steps[name] = make_step(loss, features, label_teacher)
    for step in steps.values():
        for _ in range(2):
            step()
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    reference = next(iter(times))
    rows = {
        name: {
            "seconds_median": statistics.median(t),
            "ratio_to_reference": statistics.median(a / b for a, b in zip(t, times[reference])),
        }
        for name, t in times.items()
    }
    command = command_line("benchmarks.latency.train_step", argv)
    result = {
        "run_info": {"command": command, "model": path, "batch_size": args.batch_size, "max_seq_length": args.max_seq_length,
                     "threads": args.threads, "repeats": args.repeats, "reference": reference},
        "results": rows,
        "meta_info": meta_info(command),
    }
    lines = ["# Training cost per step: LEAPLoss vs plain distillation", "", f"Command: `{command}`", "",
             f"Student and live frozen teacher: all-MiniLM-L6-v2; batch {args.batch_size}, max length {args.max_seq_length}, "
             f"{args.threads} threads, median of {args.repeats} interleaved rounds after 2 warm-up steps each.", "",
             "| loss | time per step (median) | vs MSELoss (ST) |", "| --- | --- | --- |"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['seconds_median']:.3f} s | {row['ratio_to_reference'] - 1:+.1%} |")
    write_outputs(args.out, result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
