"""Wall-clock latency of early exit against the stock model and statically truncated copies (issue 5).

For each thread count and batch size, on STS-B test sentences, the following settings are timed *in one run*,
interleaved (warm-up, then round-robin repetitions, medians of per-round ratios):

- ``stock``: the stock sentence-transformers model (no monitoring); the reference of every ratio;
- ``st_leap full depth``: EarlyExitTransformer with ``exit_threshold=None``;
- ``monitor``: the exit check from layer 2 with theta = 1.0, which never fires (pure monitoring overhead);
- ``theta=X``: real early exit at each ``--thetas`` value (l_min default: half the depth);
- ``forced l``: every sample exits at layer l (theta = 1e-6 with l_min = l), against
- ``truncated l``: a static copy of the model keeping only its first l layers (the physical limit inside
  sentence-transformers' ``encode``, whose tokenisation and pooling costs stay).

With ``--int8`` it also times and scores (STS-B test Spearman) dynamic INT8 quantisation of the Linear layers,
alone and composed with early exit. On a CUDA device it times with CUDA events in fp16.

Writes ``<out>.json`` (run_info / results / meta_info) and ``<out>.md``.

Example::

    HF_HUB_OFFLINE=1 python -m benchmarks.latency.run --threads 1,2 --batch-sizes 1,8,32 --int8
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

import st_leap
from benchmarks._common import command_line, meta_info, write_result
from st_leap.diagnostics import time_encode
from st_leap.evaluation import EarlyExitEmbeddingSimilarityEvaluator
from st_leap.model import as_early_exit
from st_leap.modules import encoder_layers
from st_leap.resources import load_stsb, resolve_model, stsb_sentences

FORCE_THETA = 1e-6  # any positive cosine passes: with l_min = l every sample stops at l


def truncated_copy(model: SentenceTransformer, num_layers: int) -> SentenceTransformer:
    """A stock copy of ``model`` keeping only its first ``num_layers`` encoder layers."""
    copied = copy.deepcopy(model)
    del encoder_layers(copied[0].auto_model)[num_layers:]
    return copied


def load_stock(model_path: str, device: str) -> SentenceTransformer:
    """The stock sentence-transformers pipeline over the model's weights, also for a model saved by st_leap (whose
    first module is an EarlyExitTransformer): its weights sit at the folder root, so a stock Transformer loads them."""
    modules_file = Path(model_path) / "modules.json"
    if modules_file.exists() and "st_leap." in modules_file.read_text(encoding="utf-8"):
        from sentence_transformers.base.modules import Transformer

        leap = st_leap.load(model_path, device=device)
        first = Transformer(model_path, max_seq_length=leap[0].max_seq_length)
        return SentenceTransformer(modules=[first, *(leap[i] for i in range(1, len(leap)))], device=device)
    return SentenceTransformer(model_path, device=device)


def sentences_for(batch_size: int, pool: list[str], minimum: int) -> list[str]:
    return pool[: max(minimum, 16 * batch_size)]


def run_cell(stock, leap, truncated, sentences, batch_size, thetas, repeats, num_layers):
    settings = {"stock": {}, "st_leap full depth": {"exit_threshold": None}, "monitor": {"exit_threshold": 1.0, "exit_min_layer": 2}}
    models = {"stock": stock}
    for theta in thetas:
        settings[f"theta={theta:g}"] = {"exit_threshold": theta}
    for layer, model in truncated.items():
        settings[f"forced {layer}"] = {"exit_threshold": FORCE_THETA, "exit_min_layer": layer}
        settings[f"truncated {layer}"] = {}
        models[f"truncated {layer}"] = model
    timed = time_encode(leap, sentences, settings, batch_size=batch_size, repeats=repeats, models=models)
    rows = {}
    for name, row in timed.items():
        stats = row["exit_stats"]
        entry = {
            "seconds_median": row["seconds_median"],
            "time_ratio_to_stock": row["ratio_to_reference"],
            "speedup_vs_stock": 1.0 / row["ratio_to_reference"],
        }
        if stats is not None:
            entry.update(
                exit_rate=stats["exit_rate"], expected_layers=stats["expected_layers"],
                theoretical_speedup=stats["layer_reduction"], counts=stats["counts"],
            )
            entry["realized_of_theoretical"] = entry["speedup_vs_stock"] / stats["layer_reduction"]
        rows[name] = entry
    for layer in truncated:
        forced, trunc = rows[f"forced {layer}"], rows[f"truncated {layer}"]
        forced["cost_vs_truncated"] = forced["time_ratio_to_stock"] / trunc["time_ratio_to_stock"] - 1.0
        forced["all_exited_at_layer"] = forced["counts"][layer - 1] == len(sentences)
        trunc["theoretical_speedup"] = num_layers / layer
    rows["monitor"]["overhead"] = rows["monitor"]["time_ratio_to_stock"] - 1.0
    return rows


def stsb_with_exits(model, kwargs, batch_size=64) -> dict:
    s1, s2, scores = load_stsb("test")
    evaluator = EarlyExitEmbeddingSimilarityEvaluator(s1, s2, scores, name="stsb-test", batch_size=batch_size, **kwargs)
    metrics = evaluator(model)
    return {"spearman_cosine": metrics["stsb-test_spearman_cosine"], "expected_layers": metrics["stsb-test_expected_layers"],
            "exit_rate": metrics["stsb-test_exit_rate"]}


def run_int8(leap, sentences, batch_size, theta, repeats):
    warnings.filterwarnings("ignore", message=".*quantiz", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(leap), {torch.nn.Linear}, dtype=torch.qint8)
    settings = {"fp32 full depth": {"exit_threshold": None}, "int8 full depth": {"exit_threshold": None},
                f"fp32 theta={theta:g}": {"exit_threshold": theta}, f"int8 theta={theta:g}": {"exit_threshold": theta}}
    models = {name: quantized for name in settings if name.startswith("int8")}
    timed = time_encode(leap, sentences, settings, batch_size=batch_size, repeats=repeats, models=models)
    rows = {}
    for name, row in timed.items():
        model = models.get(name, leap)
        rows[name] = {"speedup_vs_fp32_full": 1.0 / row["ratio_to_reference"], "seconds_median": row["seconds_median"],
                      "stsb": stsb_with_exits(model, settings[name])}
    return rows


def markdown(result: dict) -> str:
    info = result["run_info"]
    lines = [
        "# Latency: early exit vs stock and truncated models",
        "",
        f"Command: `{info['command']}`",
        "",
        f"Model: {info['model']} ({info['num_layers']} layers); device {info['device']}; {info['repeats']} interleaved "
        "rounds after warm-up; every number is a median of per-round ratios measured in the same run.",
        "",
    ]
    for cell in result["results"]:
        rows = cell["rows"]
        lines += [f"## {cell['threads']} thread(s), batch {cell['batch_size']} ({cell['num_sentences']} sentences)", ""]
        lines += ["| setting | time / stock | speed-up | exit rate | E[layers] | theoretical L/E | realized / theoretical | vs truncated copy |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in rows.items():
            def fmt(key, spec="{:.3f}", r=r):
                return spec.format(r[key]) if r.get(key) is not None else ""
            lines.append(
                f"| {name} | {fmt('time_ratio_to_stock')} | {fmt('speedup_vs_stock', '{:.2f}x')} | {fmt('exit_rate', '{:.1%}')} | "
                f"{fmt('expected_layers', '{:.2f}')} | {fmt('theoretical_speedup', '{:.2f}x')} | {fmt('realized_of_theoretical', '{:.1%}')} | "
                f"{fmt('cost_vs_truncated', '{:+.1%}')} |"
            )
        lines += ["", f"Monitoring overhead (check from layer 2, never fires): **{rows['monitor']['overhead']:+.1%}**", ""]
    if "int8" in result:
        lines += ["## INT8 dynamic quantisation composed with early exit", "",
                  f"{result['int8']['threads']} thread(s), batch {result['int8']['batch_size']}; STS-B test Spearman (cosine) of each setting.", "",
                  "| setting | speed-up vs fp32 full depth | STS-B Spearman | exit rate | E[layers] |", "| --- | --- | --- | --- | --- |"]
        for name, r in result["int8"]["rows"].items():
            lines.append(f"| {name} | {r['speedup_vs_fp32_full']:.2f}x | {r['stsb']['spearman_cosine']:.4f} | "
                         f"{r['stsb']['exit_rate']:.1%} | {r['stsb']['expected_layers']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Model path, Hub id or minilm/mpnet (default: packaged MiniLM)")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--thetas", default="0.90,0.95")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-sentences", type=int, default=64, help="Sentences per timed encode at least (default 64; else 16 x batch size)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--int8", action="store_true", help="Also time and score INT8 dynamic quantisation (CPU only)")
    parser.add_argument("--int8-theta", type=float, default=0.95)
    parser.add_argument("--overhead-only", action="store_true", help="Time only stock, st_leap full depth and monitor")
    parser.add_argument("--out", default="benchmarks/results/latency/latency")
    args = parser.parse_args(argv)

    model_path = resolve_model(args.model)
    stock = load_stock(model_path, args.device)
    if args.device.startswith("cuda"):
        stock.half()
    leap = as_early_exit(copy.deepcopy(stock))
    num_layers = leap[0].num_layers
    truncated = {} if args.overhead_only else {layer: truncated_copy(stock, layer) for layer in range(2, num_layers)}
    pool = stsb_sentences("test")
    thetas = [] if args.overhead_only else [float(t) for t in args.thetas.split(",")]
    cells = []
    grid = [(int(t), int(b)) for t in args.threads.split(",") for b in args.batch_sizes.split(",")]
    for threads, batch_size in tqdm(grid, desc="latency cells"):
        torch.set_num_threads(threads)
        sentences = sentences_for(batch_size, pool, args.min_sentences)
        rows = run_cell(stock, leap, truncated, sentences, batch_size, thetas, args.repeats, num_layers)
        cells.append({"threads": threads, "batch_size": batch_size, "num_sentences": len(sentences), "rows": rows})
        tqdm.write(f"threads={threads} batch={batch_size}: overhead {rows['monitor']['overhead']:+.1%}, "
                   + ", ".join(f"forced {layer} vs truncated {rows[f'forced {layer}']['cost_vs_truncated']:+.1%}" for layer in truncated))
    result = {
        "run_info": {
            "command": command_line("benchmarks.latency.run", argv),
            "model": args.model or "all-MiniLM-L6-v2 (packaged)", "model_path": model_path, "num_layers": num_layers,
            "device": args.device + (" fp16" if args.device.startswith("cuda") else " fp32"), "repeats": args.repeats,
            "timer": "CUDA events" if args.device.startswith("cuda") else "time.perf_counter around model.encode",
            "force_theta": FORCE_THETA,
            "overhead_only": args.overhead_only,
        },
        "results": cells,
    }
    if args.int8 and args.device == "cpu":
        torch.set_num_threads(1)
        result["int8"] = {"threads": 1, "batch_size": 32,
                          "rows": run_int8(leap, sentences_for(32, pool, args.min_sentences), 32, args.int8_theta, args.repeats)}
    result["meta_info"] = meta_info(result["run_info"]["command"])
    write_result(args.out, result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
