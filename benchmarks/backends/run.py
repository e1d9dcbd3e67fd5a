"""Early exit on the fast CPU backends (issue 18): one interleaved run per thread count, batch size and text set.

Settings, all timed in the same run (warm-up, then round-robin rounds in rotating order; medians of per-round
ratios to stock sentence-transformers on torch, with the min-max band over rounds):

- ``st torch``: stock sentence-transformers, torch (the reference of every ratio);
- ``st onnx`` / ``st openvino``: sentence-transformers' own backends, where they load (recorded as unavailable
  with the reason otherwise: optimum-onnx and optimum-intel pin other transformers versions);
- ``whole-graph onnx[-int8]`` / ``whole-graph openvino[-int8]``: the full encoder exported as one graph with the
  exporters sentence-transformers' backends use underneath (``torch.onnx``, ONNX Runtime's ``quantize_dynamic``,
  OpenVINO's ``convert_model`` and NNCF's ``compress_weights``), run inside the stock pipeline: the stand-in for
  sentence-transformers' own ``backend="onnx"`` / ``"openvino"`` (and their int8) where optimum does not install;
- ``st_leap <backend>[-int8] full`` and ``st_leap <backend>[-int8] theta=T``: the segmented export
  (:mod:`st_leap.backends`) at full depth and at the model's exit threshold, for torch, onnx, onnx-int8, openvino,
  openvino-int8.

Quality beside every speed figure: STS-B test Spearman (and, with ``--scifact``, SciFact NDCG@10 through the
beir path), per setting.

Example::

    HF_HUB_OFFLINE=1 python -m benchmarks.backends.run --model PATH --theta 0.95 --threads 1,2 \\
        --batch-sizes 1,8,32 --repeats 7 --scifact

Writes ``benchmarks/results/backends/backends.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shutil
import statistics
import time
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
from tqdm.auto import tqdm

import st_leap
from benchmarks._common import command_line, meta_info, results_dir, write_result
from st_leap.backends import convert_onnx, open_runner
from st_leap.evaluation import EarlyExitEmbeddingSimilarityEvaluator
from st_leap.evaluation.beir import evaluate_beir, load_beir_folder
from st_leap.resources import beir_dir, load_stsb, resolve_model, stsb_sentences

SEGMENTED = [("torch", None), ("onnx", None), ("onnx", "int8"), ("openvino", None), ("openvino", "int8")]


WHOLE_GRAPH = [("onnx", None), ("onnx", "int8"), ("openvino", None), ("openvino", "int8")]


def export_whole_graph(model_path: str, folder: Path, backend: str, quantize: str | None) -> Path:
    """The full encoder as one graph, with the exporters sentence-transformers' own backends use underneath
    (``torch.onnx``; ONNX Runtime's ``quantize_dynamic``; OpenVINO's ``convert_model``; NNCF's
    ``compress_weights``): the stand-in for ``backend="onnx"`` / ``"openvino"`` where optimum does not install.
    Returns the graph's file (made once, then reused)."""
    onnx_file = folder / "model.onnx"
    if not onnx_file.exists():
        folder.mkdir(parents=True, exist_ok=True)
        hf = copy.deepcopy(stock_model(model_path)[0].auto_model).eval()
        if hasattr(hf, "set_attn_implementation"):
            hf.set_attn_implementation("eager")

        class Wrapped(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]

        ids = torch.ones(2, 7, dtype=torch.long)
        axes = {0: "batch", 1: "sequence"}
        torch.onnx.export(
            Wrapped(hf), (ids, ids, torch.zeros_like(ids)), str(onnx_file), dynamo=False, opset_version=17,
            input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["hidden"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "hidden": axes},
        )
    target = folder / f"model{'_int8' if quantize else ''}{'.onnx' if backend == 'onnx' else '.xml'}"
    if target.exists():
        return target
    model_type = getattr(stock_model(model_path)[0].auto_model.config, "model_type", None)
    return convert_onnx(onnx_file, target, backend, quantize, model_type=model_type)


def whole_graph_model(model_path: str, folder: Path, backend: str, quantize: str | None, threads: int) -> SentenceTransformer:
    """Stock sentence-transformers (its tokenisation and pooling) with the encoder swapped for the whole graph."""
    runner = open_runner(export_whole_graph(model_path, folder, backend, quantize), backend, threads)
    stock = stock_model(model_path)

    def forward(features: dict, **kwargs) -> dict:
        arrays = [features[name].numpy() for name in ("input_ids", "attention_mask")]
        types = features.get("token_type_ids")
        arrays.append((torch.zeros_like(features["input_ids"]) if types is None else types).numpy())
        features["token_embeddings"] = torch.from_numpy(runner(*arrays))
        return features

    stock[0].forward = forward
    return stock


def stock_model(model_path: str) -> SentenceTransformer:
    from benchmarks.latency.run import load_stock

    return load_stock(model_path, "cpu")


def sentence_transformers_backend(model_path: str, backend: str, stock_dir: Path) -> tuple[SentenceTransformer | None, str | None]:
    """sentence-transformers' own ``backend=``, on the model's weights saved with stock modules (an st_leap
    folder names st_leap's module, which sentence-transformers' backends do not load)."""
    try:
        if not (stock_dir / "modules.json").exists():
            stock_model(model_path).save(str(stock_dir))
        return SentenceTransformer(str(stock_dir), backend=backend, device="cpu"), None
    except Exception as error:  # noqa: BLE001 -- recorded, not hidden
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"


def scifact_passages(n: int) -> list[str]:
    corpus, _, _ = load_beir_folder(beir_dir("scifact"))
    return [f"{doc['title']} {doc['text']}".strip() for doc in list(corpus.values())[:n]]


def build(model_path: str, theta: float, threads: int, export_root: Path) -> tuple[dict, dict, dict]:
    """(settings name -> encode kwargs, settings name -> model, unavailable name -> reason)."""
    torch.set_num_threads(threads)
    settings, models, unavailable = {"st torch": {}}, {"st torch": stock_model(model_path)}, {}
    for backend in ("onnx", "openvino"):
        model, reason = sentence_transformers_backend(model_path, backend, export_root / "stock")
        if model is None:
            unavailable[f"st {backend}"] = reason
        else:
            settings[f"st {backend}"], models[f"st {backend}"] = {}, model
    for backend, quantize in WHOLE_GRAPH:
        name = f"whole-graph {backend}{'-' + quantize if quantize else ''}"
        try:
            models[name] = whole_graph_model(model_path, export_root / "whole_graph", backend, quantize, threads)
            settings[name] = {}
        except Exception as error:  # noqa: BLE001 -- recorded, not hidden
            unavailable[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    for backend, quantize in SEGMENTED:
        name = f"st_leap {backend}{'-' + quantize if quantize else ''}"
        try:
            model = st_leap.from_pretrained(model_path, device="cpu", backend=backend, quantize=quantize)
        except Exception as error:  # noqa: BLE001
            unavailable[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            continue
        for label, kwargs in (
            (f"{name} full", {"exit_threshold": None}),
            # the exit check from layer 2 at theta 1.0 never fires: pure monitoring overhead on this backend
            (f"{name} monitor", {"exit_threshold": 1.0, "exit_min_layer": 2}),
            (f"{name} theta={theta:g}", {"exit_threshold": theta}),
        ):
            settings[label], models[label] = kwargs, model
    return settings, models, unavailable


def time_cell(settings: dict, models: dict, texts: list[str], batch_size: int, repeats: int) -> dict:
    names = list(settings)
    for name in names:
        models[name].encode(texts, batch_size=batch_size, show_progress_bar=False, **settings[name])
    times = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            models[name].encode(texts, batch_size=batch_size, show_progress_bar=False, **settings[name])
            times[name].append(time.perf_counter() - start)
    reference = times[names[0]]
    out = {}
    for name in names:
        ratios = [r / t for r, t in zip(reference, times[name])]
        out[name] = {
            "seconds_median": statistics.median(times[name]),
            "speedup_vs_st_torch": statistics.median(ratios),
            "band": [min(ratios), max(ratios)],
        }
    return out


def quality(settings: dict, models: dict, scifact: bool) -> dict:
    s1, s2, gold = load_stsb("test")
    out = {}
    for name in tqdm(settings, desc="Quality per setting"):
        model, kwargs = models[name], settings[name]
        if st_leap.model.early_exit_module(model) is None:  # sentence-transformers' own evaluator
            metrics = EmbeddingSimilarityEvaluator(s1, s2, gold, name="stsb", batch_size=64)(model)
            row = {"stsb_spearman": metrics["stsb_spearman_cosine"]}
        else:
            evaluator = EarlyExitEmbeddingSimilarityEvaluator(s1, s2, gold, name="stsb", batch_size=64, **kwargs)
            metrics = evaluator(model)
            row = {"stsb_spearman": metrics["stsb_spearman_cosine"], "expected_layers": metrics["stsb_expected_layers"]}
        if scifact and st_leap.model.early_exit_module(model) is not None:
            result = evaluate_beir(model, beir_dir("scifact"), show_progress_bar=False, **kwargs)
            row["scifact_ndcg@10"] = result["ndcg"]["NDCG@10"]
        out[name] = row
    return out


def summarise(cell: dict, quality_rows: dict, stsb_margin: float = 0.005) -> dict:
    """Issue 18's three checks for one timed cell.

    - ``segment_cost``: st_leap's segmented export at full depth against the whole-graph export on the same backend
      (target: no more than 5% slower);
    - ``monitor_overhead``: the exit check that never fires against full depth, per backend (targets: <= 3% at
      batch 1, <= 2% at batch 32);
    - ``exit_vs_best``: the fastest st_leap setting *with exits* (``theta=``) within ``stsb_margin`` STS-B of the fastest
      sentence-transformers-side option's full depth, against that option (target: >= 1.5x).
    """
    res = cell["results"]
    out: dict = {"segment_cost": {}, "monitor_overhead": {}}
    for backend in ("onnx", "onnx-int8", "openvino", "openvino-int8"):
        ours, theirs = res.get(f"st_leap {backend} full"), res.get(f"whole-graph {backend}")
        if ours and theirs:
            out["segment_cost"][backend] = theirs["speedup_vs_st_torch"] / ours["speedup_vs_st_torch"] - 1
    for backend in ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8"):
        full, monitor = res.get(f"st_leap {backend} full"), res.get(f"st_leap {backend} monitor")
        if full and monitor:
            out["monitor_overhead"][backend] = full["speedup_vs_st_torch"] / monitor["speedup_vs_st_torch"] - 1
    baselines = {n: r for n, r in res.items() if not n.startswith("st_leap")}
    best = max(baselines, key=lambda n: baselines[n]["speedup_vs_st_torch"])
    floor = quality_rows[best]["stsb_spearman"] - stsb_margin
    candidates = {n: r for n, r in res.items()
                  if n.startswith("st_leap") and " theta=" in n and quality_rows[n]["stsb_spearman"] >= floor}
    fastest = max(candidates, key=lambda n: candidates[n]["speedup_vs_st_torch"]) if candidates else None
    out["exit_vs_best"] = {
        "best_sentence_transformers_side": best,
        "its_speedup": baselines[best]["speedup_vs_st_torch"],
        "its_stsb": quality_rows[best]["stsb_spearman"],
        "fastest_st_leap_at_equal_quality": fastest,
        "ratio": candidates[fastest]["speedup_vs_st_torch"] / baselines[best]["speedup_vs_st_torch"] if fastest else None,
    }
    return out


def markdown(command: str, cells: list[dict], quality_rows: dict, unavailable: dict) -> str:
    lines = ["# Early exit on ONNX Runtime and OpenVINO (CPU)", "", f"`{command}`", ""]
    lines += [f"- unavailable: {name}: {reason}" for name, reason in unavailable.items()]
    lines += ["", "Quality of every setting (whole STS-B test set):", "",
              "| setting | STS-B test Spearman | E[layers] |", "|---|---|---|"]
    for name, row in quality_rows.items():
        layers = row.get("expected_layers")
        lines.append(f"| {name} | {row['stsb_spearman']:.4f} | {'-' if layers is None else f'{layers:.2f}'} |")
    lines += ["", "## The checks of issue 18, per cell", "",
              "Segment cost: st_leap's per-layer export at full depth against the whole graph on the same backend "
              "(target <= 5%). Monitoring overhead: the exit check that never fires (theta 1.0 from layer 2) against "
              "full depth on the same backend (targets <= 3% at batch 1, <= 2% at batch 32). Exit vs best: the "
              "fastest st_leap setting within 0.005 STS-B of the fastest sentence-transformers-side option, as a "
              "multiple of that option's speed (target >= 1.5x); '-' when no exit setting keeps that quality.", "",
              "| threads | texts | batch | segment cost (onnx / onnx-int8 / openvino / openvino-int8) | monitoring "
              "overhead (torch / onnx / onnx-int8 / openvino / openvino-int8) | fastest ST-side option | fastest "
              "st_leap at equal quality | ratio |", "|---|---|---|---|---|---|---|---|"]
    for cell in cells:
        summary = cell["summary"]
        cost = " / ".join(f"{v:+.0%}" for v in summary["segment_cost"].values()) or "-"
        overhead = " / ".join(f"{v:+.1%}" for v in summary["monitor_overhead"].values()) or "-"
        ev = summary["exit_vs_best"]
        ratio = f"{ev['ratio']:.2f}x" if ev["ratio"] is not None else "-"
        lines.append(
            f"| {cell['threads']} | {cell['texts']} | {cell['batch_size']} | {cost} | {overhead} | "
            f"{ev['best_sentence_transformers_side']} ({ev['its_speedup']:.2f}x, {ev['its_stsb']:.4f}) | "
            f"{ev['fastest_st_leap_at_equal_quality'] or '-'} | {ratio} |"
        )
    for cell in cells:
        lines += ["", f"### {cell['threads']} threads, {cell['texts']}, batch {cell['batch_size']}", "",
                  "| setting | speed-up vs st torch (min-max band over rounds) |", "|---|---|"]
        lines += [f"| {n} | {r['speedup_vs_st_torch']:.2f}x ({r['band'][0]:.2f}-{r['band'][1]:.2f}) |"
                  for n, r in cell["results"].items()]
    lines.append("")
    return "\n".join(lines)


def resumed(out: str, run_info: dict) -> tuple[list[dict], dict, dict | None, list[str]]:
    """The cells, unavailable backends, quality rows and commands of the earlier run in ``out`` (``--resume``). Its
    settings must equal this run's, so that every cell of the table measures the same thing."""
    path = Path(out).with_suffix(".json")
    if not path.exists():
        raise SystemExit(f"--resume: {path} does not exist; run without --resume first")
    earlier = json.loads(path.read_text(encoding="utf-8"))
    settings = {k: v for k, v in earlier["run_info"].items() if k != "commands"}
    if settings != run_info:
        raise SystemExit(f"--resume: {path} was measured with {settings}, this run asks for {run_info}; "
                         "use the same --model/--theta/--repeats/--sentences/--passages or another --out")
    commands = earlier["run_info"].get("commands") or [earlier["meta_info"]["command"]]
    results = earlier["results"]
    return results["cells"], results["unavailable"], results["quality"], list(commands)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--theta", type=float, default=0.95)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--passages", type=int, default=128)
    parser.add_argument("--scifact", action="store_true", help="also SciFact NDCG@10 per st_leap setting (slow)")
    parser.add_argument("--out", default=str(results_dir("backends") / "backends"))
    parser.add_argument("--texts", default="sentences,passages", help="text sets to time: sentences, passages or both")
    parser.add_argument("--resume", action="store_true",
                        help="keep the cells and quality of an earlier run with the same settings in --out; time only the missing cells")
    args = parser.parse_args(argv)
    model_path = resolve_model(args.model)
    texts = {"STS-B sentences": stsb_sentences("test")[: args.sentences], "SciFact passages": scifact_passages(args.passages)}
    chosen = {"sentences": "STS-B sentences", "passages": "SciFact passages"}
    try:
        timed_sets = [chosen[name] for name in args.texts.split(",")]
    except KeyError as error:
        raise SystemExit(f"--texts takes sentences, passages or both, got {args.texts!r}") from error
    run_info = {"model": args.model, "theta": args.theta, "repeats": args.repeats,
                "sentences": args.sentences, "passages": args.passages}
    command = command_line("benchmarks.backends.run", argv)
    cells, unavailable, quality_rows, commands = resumed(args.out, run_info) if args.resume else ([], {}, None, [])
    commands.append(command)
    # Exports of this run's model only (the segmented ones are cached beside the model, keyed by its weights); a
    # resumed run keeps the earlier run's exports of the same model.
    export_root = Path("runs/backends_exports") / hashlib.sha1(str(Path(model_path).resolve()).encode()).hexdigest()[:12]
    if not args.resume:
        shutil.rmtree(export_root, ignore_errors=True)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    for threads in [int(t) for t in args.threads.split(",")]:
        todo = [(name, b) for name in timed_sets for b in batch_sizes if not any(
            (c["threads"], c["texts"], c["batch_size"]) == (threads, name, b) for c in cells)]
        if not todo:
            continue
        settings, models, built_unavailable = build(model_path, args.theta, threads, export_root)
        unavailable.update(built_unavailable)
        if quality_rows is None:
            quality_rows = quality(settings, models, args.scifact)
        for text_name, batch_size in tqdm(todo, desc=f"{threads} threads"):
            cell = {"threads": threads, "texts": text_name, "batch_size": batch_size,
                    "results": time_cell(settings, models, texts[text_name], batch_size, args.repeats)}
            cell["summary"] = summarise(cell, quality_rows)
            cells.append(cell)
            cells.sort(key=lambda c: (c["threads"], list(texts).index(c["texts"]), c["batch_size"]))
            # Written after every cell: a stopped run keeps what it measured (and --resume goes on from there).
            result = {
                "run_info": {**run_info, "commands": commands},
                "results": {"cells": cells, "quality": quality_rows, "unavailable": unavailable},
                "meta_info": meta_info(command),
            }
            write_result(args.out, result, markdown(" ; then ".join(commands), cells, quality_rows, unavailable))
    print(markdown(" ; then ".join(commands), cells, quality_rows, unavailable))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
