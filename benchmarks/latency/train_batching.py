"""Training step time with random batches vs length-grouped batches (``group_by_length`` in a train config).

One student (all-MiniLM-L6-v2) and one LEAPLoss with the recipe's settings (its defaults: final 4, anchor 12,
adjacent 6, student weight 0.7); the teacher's final embeddings are computed outside the timer, as the precomputed-teacher recipe does. Each
round draws the next batch of ST's default random batch sampler and of :class:`st_leap.sampler.LengthGroupedBatchSampler`
over the same training sentences and times one optimizer step (forward, backward, AdamW) on each, interleaved
after warm-up. Reports the median step time, the median per-round ratio, and the mean padded length (tokens per
row the model actually computes on).

Example::

    HF_HUB_OFFLINE=1 python -m benchmarks.latency.train_batching --threads 2 --rounds 40
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from datasets import Dataset
from sentence_transformers.base.sampler import DefaultBatchSampler
from sentence_transformers.util import batch_to_device
from torch.utils.data import RandomSampler

from benchmarks._common import command_line, meta_info
from benchmarks.latency.train_step import step_parser, student_and_teacher, write_outputs
from st_leap.losses import LEAPLoss
from st_leap.resources import load_sentences
from st_leap.sampler import LengthGroupedBatchSampler


def main(argv=None) -> int:
    parser = step_parser(__doc__, "benchmarks/results/latency/train_batching")
    parser.add_argument("--num-sentences", type=int, default=64000)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    path, student, teacher = student_and_teacher(args)
    sentences = load_sentences(args.num_sentences)
    dataset = Dataset.from_dict({"sentence": sentences})
    generator = torch.Generator()
    samplers = {
        "random (ST default)": DefaultBatchSampler(
            RandomSampler(dataset, generator=generator), batch_size=args.batch_size, drop_last=True
        ),
        "length-grouped": LengthGroupedBatchSampler(dataset, batch_size=args.batch_size, drop_last=True, seed=0),
    }
    iterators = {name: iter(sampler) for name, sampler in samplers.items()}

    loss = LEAPLoss(student, teacher=None, teacher_dim=teacher.get_embedding_dimension())  # the recipe's loss
    optimizer = torch.optim.AdamW([p for p in loss.parameters() if p.requires_grad], lr=1e-5)
    student.train()

    def step(indices: list[int]) -> tuple[float, int]:
        texts = [sentences[i] for i in indices]
        features = batch_to_device(student.preprocess(texts), "cpu")
        with torch.no_grad():
            labels = teacher(dict(features))["sentence_embedding"]
        start = time.perf_counter()
        optimizer.zero_grad()
        out = loss([dict(features)], labels)
        sum(out.values()).backward()
        optimizer.step()
        return time.perf_counter() - start, int(features["input_ids"].shape[1])

    for _ in range(args.warmup):
        for name in samplers:
            step(next(iterators[name]))
    times = {name: [] for name in samplers}
    padded = {name: [] for name in samplers}
    for _ in range(args.rounds):
        for name in samplers:
            seconds, length = step(next(iterators[name]))
            times[name].append(seconds)
            padded[name].append(length)
    reference = next(iter(samplers))
    rows = {
        name: {
            "seconds_median": statistics.median(t),
            "ratio_to_reference": statistics.median(a / b for a, b in zip(t, times[reference])),
            "mean_padded_length": statistics.mean(padded[name]),
        }
        for name, t in times.items()
    }
    command = command_line("benchmarks.latency.train_batching", argv)
    result = {
        "run_info": {"command": command, "model": path, "num_sentences": args.num_sentences,
                     "batch_size": args.batch_size, "max_seq_length": args.max_seq_length, "threads": args.threads,
                     "rounds": args.rounds, "warmup": args.warmup, "reference": reference},
        "results": rows,
        "meta_info": meta_info(command),
    }
    lines = ["# Training step time: random vs length-grouped batches", "", f"Command: `{command}`", "",
             f"Student all-MiniLM-L6-v2, LEAPLoss (the recipe's: final 4, anchor 12, adjacent 6, student weight 0.7, precomputed teacher), "
             f"batch {args.batch_size} of {args.num_sentences} NLI training sentences, max length "
             f"{args.max_seq_length}, {args.threads} threads; median of {args.rounds} interleaved rounds after "
             f"{args.warmup} warm-up rounds, each round a new batch from each sampler.", "",
             "| batches | mean padded length | time per step (median) | vs random |", "| --- | --- | --- | --- |"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['mean_padded_length']:.1f} | {row['seconds_median']:.3f} s | "
                     f"{row['ratio_to_reference']:.2f}x |")
    write_outputs(args.out, result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
