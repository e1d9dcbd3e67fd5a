"""What ``torch.compile`` gives the early-exit layer loop on CPU (issue 16).

One run, interleaved: eager, ``model.compile()`` and ``model.compile(dynamic=True)``, each at full depth and at
an exit threshold, on STS-B test sentences, for each batch size. It records the compile (first call) time, the
median encode time after warm-up and its ratio to eager, the graph breaks dynamo reports for one forward pass
(``torch._dynamo.explain``), and checks that compiled embeddings and exit layers equal eager ones.

Example::

    HF_HUB_OFFLINE=1 python -m benchmarks.latency.compile --threads 2 --batch-sizes 1,32

Writes ``benchmarks/results/latency/compile.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tqdm.auto import tqdm

import st_leap
from benchmarks._common import command_line, meta_info, results_dir, write_result
from st_leap.resources import resolve_model, stsb_sentences

MODES = ("eager", "compile", "compile dynamic")


def load(model_path: str, mode: str):
    model = st_leap.from_pretrained(model_path, device="cpu")
    if mode == "compile":
        model.compile()
    elif mode == "compile dynamic":
        model.compile(dynamic=True)
    return model


def graph_breaks(model_path: str, sentences: list[str], theta: float | None) -> dict:
    import torch._dynamo

    torch._dynamo.reset()
    model = st_leap.from_pretrained(model_path, device="cpu")
    model.eval()
    features = model.preprocess(sentences)
    explanation = torch._dynamo.explain(model[0].forward)(features, exit_threshold=theta)
    torch._dynamo.reset()
    return {
        "graph_count": explanation.graph_count,
        "graph_break_count": explanation.graph_break_count,
        "break_reasons": sorted({str(b.reason).splitlines()[0][:160] for b in explanation.break_reasons}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--theta", type=float, default=0.95)
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(results_dir("latency") / "compile"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model_path = resolve_model(args.model)
    sentences = stsb_sentences("test")[: args.sentences]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    thetas = [None, args.theta]

    models, compile_seconds, reference = {}, {}, {}
    for mode in tqdm(MODES, desc="Loading and compiling"):
        models[mode] = load(model_path, mode)
        for theta in thetas:
            start = time.perf_counter()
            out = models[mode].encode(sentences, exit_threshold=theta, output_value=None, batch_size=max(batch_sizes))
            compile_seconds[f"{mode}, theta={theta}"] = time.perf_counter() - start
            layers = [int(o["exit_layer"]) for o in out]
            emb = torch.stack([o["sentence_embedding"] for o in out])
            if mode == "eager":
                reference[theta] = (layers, emb)
            else:
                same_layers = layers == reference[theta][0]
                max_diff = float((emb - reference[theta][1]).abs().max())
                compile_seconds[f"{mode}, theta={theta}, same exits"] = same_layers
                compile_seconds[f"{mode}, theta={theta}, max abs diff"] = max_diff

    cells = []
    total = len(batch_sizes) * len(thetas) * args.repeats * len(MODES)
    progress = tqdm(total=total, desc="Timing (interleaved)")
    for batch_size in batch_sizes:
        for theta in thetas:
            for mode in MODES:  # warm-up at this batch size (a recompile for static shapes)
                models[mode].encode(sentences, exit_threshold=theta, batch_size=batch_size, show_progress_bar=False)
            times = {mode: [] for mode in MODES}
            for round_index in range(args.repeats):
                order = MODES[round_index % 3 :] + MODES[: round_index % 3]
                for mode in order:
                    start = time.perf_counter()
                    models[mode].encode(sentences, exit_threshold=theta, batch_size=batch_size, show_progress_bar=False)
                    times[mode].append(time.perf_counter() - start)
                    progress.update()
            eager = times["eager"]
            cells.append(
                {
                    "batch_size": batch_size,
                    "theta": theta,
                    **{
                        mode: {
                            "seconds_median": statistics.median(times[mode]),
                            "speedup_vs_eager": statistics.median(e / t for e, t in zip(eager, times[mode])),
                            "speedup_band": [min(e / t for e, t in zip(eager, times[mode])), max(e / t for e, t in zip(eager, times[mode]))],
                        }
                        for mode in MODES
                    },
                }
            )
    progress.close()
    breaks = {f"theta={t}": graph_breaks(model_path, sentences[:8], t) for t in thetas}
    command = command_line("benchmarks.latency.compile", argv)
    result = {
        "run_info": {"model": args.model, "threads": args.threads, "sentences": len(sentences), "repeats": args.repeats},
        "results": {"cells": cells, "first_call": compile_seconds, "graph_breaks": breaks},
        "meta_info": meta_info(command),
    }
    lines = [
        "# torch.compile and the early-exit layer loop (CPU)",
        "",
        f"`{command}`",
        "",
        f"{len(sentences)} STS-B test sentences, {args.threads} threads, median of {args.repeats} interleaved rounds "
        "after warm-up; speed-up = eager time / compiled time, per round (band: min-max over rounds).",
        "",
        "| batch | theta | compile: speed-up (band) | compile dynamic: speed-up (band) |",
        "|---|---|---|---|",
    ]
    for cell in cells:
        parts = [
            f"{cell[m]['speedup_vs_eager']:.2f}x ({cell[m]['speedup_band'][0]:.2f}-{cell[m]['speedup_band'][1]:.2f})"
            for m in ("compile", "compile dynamic")
        ]
        lines.append(f"| {cell['batch_size']} | {cell['theta']} | {parts[0]} | {parts[1]} |")
    lines += ["", "First call (includes compilation), seconds, and agreement with eager:", ""]
    lines += [f"- {k}: {v:.2f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in compile_seconds.items()]
    lines += ["", "Graph breaks in one forward pass of the module (`torch._dynamo.explain`):", ""]
    for name, b in breaks.items():
        lines.append(f"- {name}: {b['graph_count']} graphs, {b['graph_break_count']} breaks")
        lines += [f"  - {reason}" for reason in b["break_reasons"]]
    lines.append("")
    write_result(args.out, result, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
