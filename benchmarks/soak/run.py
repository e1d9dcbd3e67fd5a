"""Soak test (issue 17): encode many texts in a loop with early exit and varying batch sizes; memory must stay
bounded and throughput stable.

Not part of CI (it runs minutes). Texts are sentences and short passages from the shared corpus; each round
encodes ``--round-texts`` of them through ``model.encode`` (the serving path) at a batch size and threshold drawn
in turn from ``--batch-sizes`` and ``--thresholds``, then records resident memory (RSS, from ``/proc``) and
throughput. After ``--warmup-rounds`` the RSS growth must stay under ``--max-rss-growth`` (5%) and each round's
throughput (per setting) within a band of the setting's median; the result says pass or fail per check.

The allocator decides the memory check: under glibc's default ``malloc`` the loop grows (plain
sentence-transformers does too; see ``benchmarks.soak.memory``), under jemalloc or with a fixed
``MALLOC_MMAP_THRESHOLD_`` it stays flat. The allocator environment is recorded in the result.

Example::

    HF_HUB_OFFLINE=1 python -m benchmarks.soak.run --texts 200000 --threads 2
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 HF_HUB_OFFLINE=1 \
        python -m benchmarks.soak.run --texts 200000 --threads 2 --out benchmarks/results/soak/soak_jemalloc

Writes ``benchmarks/results/soak/soak.{json,md}``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch
from tqdm.auto import tqdm

import st_leap
from benchmarks._common import command_line, meta_info, results_dir, write_result
from benchmarks.soak.memory import allocator_env, mixed_texts, rss_mib
from st_leap.resources import resolve_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--texts", type=int, default=200_000, help="total texts to encode")
    parser.add_argument("--round-texts", type=int, default=5_000, help="texts per round")
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--thresholds", default="0.9,0.95,none")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup-rounds", type=int, default=None, help="default: one round per batch size")
    parser.add_argument("--max-rss-growth", type=float, default=0.05)
    parser.add_argument("--throughput-band", type=float, default=0.5, help="allowed deviation from the median")
    parser.add_argument("--out", default=str(results_dir("soak") / "soak"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = st_leap.from_pretrained(resolve_model(args.model), device="cpu")
    # One passage in every 11 texts, so every round does the same work (the first run's rounds were all sentences
    # or heavy with passages, which made throughput vary for a reason that is not the model's).
    pool_texts = mixed_texts(22_000)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    thresholds = [None if t.strip().lower() == "none" else float(t) for t in args.thresholds.split(",")]
    # Batch sizes cycle fastest, so the warm-up (one round per batch size by default) has seen the largest batch
    # shape before the baseline is taken: memory held for the largest batch is a level, not growth.
    settings = [(batch_size, theta) for theta in thresholds for batch_size in batch_sizes]
    if args.warmup_rounds is None:
        args.warmup_rounds = len(batch_sizes)
    rounds = max(1, args.texts // args.round_texts)
    command = command_line("benchmarks.soak.run", argv)

    def write_report(rows: list[dict], done: int) -> tuple[str, dict]:
        after_warmup = rows[args.warmup_rounds :] or rows
        baseline = after_warmup[0]["rss_mib"]
        peak = max(r["rss_mib"] for r in after_warmup)
        growth = (after_warmup[-1]["rss_mib"] - baseline) / baseline
        stability = {}
        for batch_size, theta in settings:
            speeds = [r["texts_per_second"] for r in after_warmup if (r["batch_size"], r["exit_threshold"]) == (batch_size, theta)]
            if speeds:
                median = statistics.median(speeds)
                worst = max(abs(s - median) / median for s in speeds)
                stability[f"batch {batch_size}, theta {theta}"] = {
                    "median_texts_per_second": median,
                    "max_relative_deviation": worst,
                    "rounds": len(speeds),
                }
        checks = {
            "rss_growth_after_warmup": growth,
            "rss_growth_ok": growth < args.max_rss_growth,
            "throughput_ok": all(v["max_relative_deviation"] <= args.throughput_band for v in stability.values()),
        }
        result = {
            "run_info": {
                "model": args.model,
                "texts": rounds * args.round_texts,
                "round_texts": args.round_texts,
                "threads": args.threads,
                "settings": [{"batch_size": b, "exit_threshold": t} for b, t in settings],
                "warmup_rounds": args.warmup_rounds,
                "allocator_env": allocator_env(),
            },
            "results": {"rounds": rows, "rss_mib_after_warmup": baseline, "rss_mib_peak": peak, "throughput": stability},
            "checks": checks,
            "meta_info": meta_info(command),
        }
        lines = [
            "# Soak test: encode with early exit in a loop",
            "",
            f"`{command}`",
            "",
            f"{rounds * args.round_texts:,} texts in {rounds} rounds of {args.round_texts:,}, {args.threads} threads, "
            f"settings cycled: batch sizes {batch_sizes} x thresholds {thresholds}; allocator environment: "
            f"{', '.join(f'`{k}={v}`' for k, v in allocator_env().items()) or 'defaults (glibc malloc)'}.",
            "",
            f"- RSS after warm-up {baseline:.0f} MiB, at the end {after_warmup[-1]['rss_mib']:.0f} MiB, peak {peak:.0f} MiB: "
            f"growth {growth:+.1%} ({'pass' if checks['rss_growth_ok'] else 'FAIL'}, limit {args.max_rss_growth:.0%})",
            f"- Throughput per setting within ±{args.throughput_band:.0%} of its median after warm-up: "
            f"{'pass' if checks['throughput_ok'] else 'FAIL'}",
            "",
            "| setting | rounds | median texts/s | max deviation |",
            "|---|---|---|---|",
            *(
                f"| {name} | {v['rounds']} | {v['median_texts_per_second']:.0f} | {v['max_relative_deviation']:.1%} |"
                for name, v in stability.items()
            ),
            "",
        ]
        result["run_info"]["rounds_done"] = done
        lines.insert(3, "" if done == rounds else f"**Stopped after {done} of {rounds} rounds.**\n")
        write_result(args.out, result, "\n".join(lines))
        return "\n".join(lines), checks

    rows = []
    offset = 0
    for index in tqdm(range(rounds), desc="Soak rounds"):
        batch_size, theta = settings[index % len(settings)]
        texts = [pool_texts[(offset + i) % len(pool_texts)] for i in range(args.round_texts)]
        offset += args.round_texts
        start = time.perf_counter()
        embeddings = model.encode(texts, batch_size=batch_size, exit_threshold=theta, show_progress_bar=False)
        seconds = time.perf_counter() - start
        exit_rate = model[0].exit_stats.exit_rate  # this thread's last call
        del embeddings
        gc.collect()
        rows.append(
            {
                "round": index,
                "batch_size": batch_size,
                "exit_threshold": theta,
                "texts_per_second": args.round_texts / seconds,
                "exit_rate": exit_rate,
                "rss_mib": rss_mib(),
            }
        )
        write_report(rows, index + 1)  # after every round: a stopped soak keeps what it measured

    markdown, checks = write_report(rows, len(rows))
    print(markdown)
    return 0 if checks["rss_growth_ok"] and checks["throughput_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
