"""Per-tensor or per-channel int8 weights: how close an exported static depth stays to torch fp32.

The model's static depth is exported once as an fp32 ONNX graph (``st_leap.backends.export``), then quantised with
ONNX Runtime's ``quantize_dynamic`` several ways: one scale per weight tensor (ONNX Runtime's default), one per
output channel, per channel with ``reduce_range``, per channel with the architecture's fp32 MatMuls
(``st_leap.backends.INT8_FP32_NODES``: what ``st-leap export --quantize int8`` does) and per channel on the attention
projections only. Each graph encodes the STS-B test sentences; reported is the cosine of its embeddings to torch
fp32 at the same depth (mean and minimum), and how many weight MatMuls it kept in fp32.

    HF_HUB_OFFLINE=1 python -m benchmarks.backends.int8_channels --model runs/query/retrieval --depth 3
    HF_HUB_OFFLINE=1 python -m benchmarks.backends.int8_channels --model mpnet --depth 12 --out benchmarks/results/backends/int8_mpnet
    HF_HUB_OFFLINE=1 python -m benchmarks.backends.int8_channels --model mpnet --depth 12 --split dev --out benchmarks/results/backends/int8_mpnet_dev
    HF_HUB_OFFLINE=1 python -m benchmarks.backends.int8_channels --model runs/qe_mpnet/scifact_student_d6_longer --depth 6 --split dev --out benchmarks/results/backends/int8_student_longer_dev

A saved query encoder for a kept index (``st-leap fit-query-encoder``) is measured on its query side.

Writes ``benchmarks/results/backends/int8_channels.{json,md}``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import torch

import st_leap
from benchmarks._common import command_line, meta_info, results_dir, write_result
from st_leap import resources
from st_leap.backbone import Backbone
from st_leap.backends import export, int8_fp32_nodes, query_side

VARIANTS = {"per tensor": {}, "per channel": {"per_channel": True},
            "per channel, reduce_range": {"per_channel": True, "reduce_range": True},
            "per channel, the architecture's fp32 MatMuls (st_leap's export)": {"per_channel": True, "keep": "st_leap"},
            "per channel, attention projections only": {"per_channel": True, "keep": "ffn"}}


def kept_fp32(graph_file: Path, model_type: str, keep: str | None) -> list[str]:
    """The weight MatMuls a variant keeps in fp32: none, st_leap's choice for the architecture, or the whole
    feed-forward block (every MatMul with a weight outside the attention)."""
    import onnx

    if keep is None:
        return []
    if keep == "st_leap":
        return int8_fp32_nodes(graph_file, model_type)
    graph = onnx.load(str(graph_file)).graph
    weights = {init.name for init in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)
            and "attention" not in n.name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--split", default="test", choices=["dev", "test"],
                        help="STS-B sentences to compare on (dev: to choose a setting; default: %(default)s)")
    parser.add_argument("--work-dir", default="runs/int8_channels")
    parser.add_argument("--out", default=str(results_dir("backends") / "int8_channels"))
    args = parser.parse_args(argv)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.set_num_threads(2)
    root = Path(args.work_dir)
    shutil.rmtree(root, ignore_errors=True)
    # a saved query encoder for a kept index: its query side (the route that is exported as one graph)
    model = query_side(st_leap.load(resources.resolve_model(args.model), device="cpu"))
    model_type = Backbone(model[0].auto_model).model_type
    fp32 = export(model, root / "fp32", "onnx", None, depth=args.depth)
    texts = resources.stsb_sentences(args.split)
    reference = model.encode(texts, truncate_layers=args.depth, exit_threshold=None, convert_to_tensor=True,
                             normalize_embeddings=True)

    def cosine(folder: Path) -> dict[str, float]:
        served = st_leap.load(str(folder)).encode(texts, convert_to_tensor=True, normalize_embeddings=True)
        cos = (served * reference).sum(-1)
        return {"mean": float(cos.mean()), "min": float(cos.min())}

    result: dict[str, Any] = {"model": args.model, "depth": args.depth, "texts": len(texts),
                              "variants": {"fp32": cosine(fp32)}, "meta_info": meta_info(
                                  command_line("benchmarks.backends.int8_channels", argv))}
    for name, options in VARIANTS.items():
        folder = root / "".join(c if c.isalnum() else "_" for c in name)
        shutil.copytree(fp32, folder)
        options = dict(options)
        keep = kept_fp32(fp32 / "model.onnx", model_type, options.pop("keep", None))
        quantize_dynamic(str(fp32 / "model.onnx"), str(folder / "model.onnx"), weight_type=QuantType.QInt8,
                         nodes_to_exclude=keep, **options)
        result["variants"][name] = {**cosine(folder), "fp32_matmuls": len(keep)}
    lines = ["# int8 weights per tensor or per channel", "", f"Command: `{result['meta_info']['command']}`", "",
             f"`{args.model}` at depth {args.depth}, one ONNX graph; cosine of its embeddings to torch fp32 at the same "
             f"depth over {len(texts)} STS-B {args.split} sentences.", "", "| graph | weight MatMuls kept fp32 | mean cosine | min cosine |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {k} | {v.get('fp32_matmuls', 'all')} | {v['mean']:.4f} | {v['min']:.4f} |"
              for k, v in result["variants"].items()]
    write_result(args.out, result, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
