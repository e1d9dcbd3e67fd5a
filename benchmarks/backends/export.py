"""The exported pick against the whole model: one static-depth graph (``st_leap.backends.export``) against the
original's whole-graph int8 and stock torch fp32 at full depth.

Settings, all timed in the same run (warm-up, then round-robin rounds in rotating order; medians of per-round
ratios to the first setting, with the min-max band over rounds), per thread count and batch size:

- ``st torch fp32 full``: stock sentence-transformers on torch, every layer (the reference of every ratio);
- ``whole-graph <backend>-int8 full``: the original's full encoder as one int8 graph in the stock pipeline
  (:func:`benchmarks.backends.run.whole_graph_model`, the stand-in for sentence-transformers' own backends);
- ``export <backend>-int8 depth=D``: the folder written by ``st_leap.backends.export(model, out, backend,
  quantize="int8", depth=D)`` and loaded with ``st_leap.load``: tokenizer, then one graph (embeddings, D layers,
  pooling, normalize).

Quality beside the speed: the exported embeddings' cosine to torch fp32 at the same depth (``truncate_layers=D``),
mean and minimum over the STS-B test sentences (the target for int8: >= 0.99 on the real model).

Example::

    HF_HUB_OFFLINE=1 python -m benchmarks.backends.export --depth 3 --threads 1,2 --batch-sizes 1,32 --repeats 7

Writes ``benchmarks/results/backends/export.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import st_leap
from benchmarks._common import command_line, meta_info, results_dir, write_result
from benchmarks.backends.run import stock_model, time_cell, whole_graph_model
from st_leap.backends import EXPORT_FILE, export, model_fingerprint
from st_leap.resources import resolve_model, stsb_sentences


def build(
    model_path: str, depth: int, backend: str, threads: int, export_root: Path, original_path: str | None = None
) -> tuple[dict, dict]:
    """(settings name -> encode kwargs, settings name -> model) for one thread count. The full-depth references are
    ``original_path``'s (default: the exported model itself)."""
    torch.set_num_threads(threads)  # the exported folder's runtime takes torch's thread count when it opens
    original_path = original_path or model_path
    folder = export_root / f"{backend}-int8-depth{depth}"
    model = st_leap.from_pretrained(model_path, device="cpu")
    meta = folder / EXPORT_FILE
    # exported again unless the folder holds this model's graph (a graph another model left there is never timed)
    if not meta.exists() or json.loads(meta.read_text()).get("fingerprint") != model_fingerprint(model[0]):
        export(model, folder, backend, quantize="int8", depth=depth)
    models = {
        "st torch fp32 full": stock_model(original_path),
        f"whole-graph {backend}-int8 full": whole_graph_model(
            original_path, export_root / "whole_graph", backend, "int8", threads
        ),
        f"export {backend}-int8 depth={depth}": st_leap.load(str(folder)),
    }
    return dict.fromkeys(models, {}), models


def agreement(model_path: str, exported: object, depth: int, texts: list[str]) -> dict:
    """Cosine of the exported embeddings to torch fp32 at the same depth."""
    reference = st_leap.from_pretrained(model_path, device="cpu").encode(texts, truncate_layers=depth, batch_size=64)
    got = exported.encode(texts, batch_size=64)
    cos = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "texts": len(texts)}


def markdown(command: str, cells: list[dict], quality: dict) -> str:
    lines = [
        "# Exported static depth vs the whole model",
        "",
        f"Command: `{command}`",
        "",
        f"Exported embeddings vs torch fp32 at depth {quality['depth']}: cosine mean {quality['cosine_mean']:.4f}, "
        f"min {quality['cosine_min']:.4f} over {quality['texts']} STS-B test sentences.",
        "",
        "| threads | batch | setting | median s | speed-up vs st torch fp32 (min-max) |",
        "| ---: | ---: | --- | ---: | --- |",
    ]
    for cell in cells:
        for name, row in cell["timings"].items():
            lines.append(
                f"| {cell['threads']} | {cell['batch_size']} | {name} | {row['seconds_median']:.4f} | "
                f"{row['speedup_vs_st_torch']:.2f}x ({row['band'][0]:.2f}-{row['band'][1]:.2f}) |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="default: all-MiniLM-L6-v2 (st_leap.resources.minilm_path())")
    parser.add_argument("--original", default=None, help="the full-depth references' model (default: --model)")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--backend", choices=["onnx", "openvino"], default="onnx")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sentences", type=int, default=256, help="texts per timed encode call")
    parser.add_argument("--export-root", default=None, help="where the exports go (default: beside --out)")
    parser.add_argument("--out", default=str(results_dir("backends") / "export"))
    args = parser.parse_args(argv)
    command = command_line("benchmarks.backends.export", argv)
    model_path = resolve_model(args.model)
    export_root = Path(args.export_root or Path(args.out).parent / "export_graphs")
    texts = stsb_sentences("test")[: args.sentences]
    cells = []
    quality: dict = {}
    for threads in (int(t) for t in args.threads.split(",")):
        original = resolve_model(args.original) if args.original else None
        settings, models = build(model_path, args.depth, args.backend, threads, export_root, original)
        if not quality:
            exported = models[f"export {args.backend}-int8 depth={args.depth}"]
            quality = {"depth": args.depth, **agreement(model_path, exported, args.depth, stsb_sentences("test"))}
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            print(f"threads={threads} batch={batch_size}", flush=True)
            timings = time_cell(settings, models, texts, batch_size, args.repeats)
            cells.append({"threads": threads, "batch_size": batch_size, "timings": timings})
    result = {
        "measured": "encode seconds (median of interleaved rounds) of the exported static-depth int8 graph, the "
        "original's whole-graph int8 and stock torch fp32 at full depth; cosine of the export to torch at its depth",
        "model_path": model_path,
        "backend": args.backend,
        "depth": args.depth,
        "texts_per_call": len(texts),
        "repeats": args.repeats,
        "cells": cells,
        "quality": quality,
        "meta_info": meta_info(command),
    }
    path = write_result(args.out, result, markdown(command, cells, quality))
    print(f"wrote {path} and {Path(path).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
