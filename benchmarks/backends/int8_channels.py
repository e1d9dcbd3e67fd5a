"""Per-tensor or per-channel int8 weights: how close an exported static depth stays to torch fp32.

The model's static depth is exported once as an fp32 ONNX graph (``st_leap.backends.export``), then quantised with
ONNX Runtime's ``quantize_dynamic`` three ways: one scale per weight tensor (ONNX Runtime's default), one per output
channel (st_leap's default), and per channel with ``reduce_range``. Each graph encodes the STS-B test sentences;
reported is the cosine of its embeddings to torch fp32 at the same depth (mean and minimum).

    HF_HUB_OFFLINE=1 python -m benchmarks.backends.int8_channels --model runs/query/retrieval --depth 3

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
from st_leap.backends import export

VARIANTS = {"per tensor": {}, "per channel": {"per_channel": True},
            "per channel, reduce_range": {"per_channel": True, "reduce_range": True}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--work-dir", default="runs/int8_channels")
    parser.add_argument("--out", default=str(results_dir("backends") / "int8_channels"))
    args = parser.parse_args(argv)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.set_num_threads(2)
    root = Path(args.work_dir)
    shutil.rmtree(root, ignore_errors=True)
    model = st_leap.load(args.model, device="cpu")
    fp32 = export(model, root / "fp32", "onnx", None, depth=args.depth)
    texts = resources.stsb_sentences("test")
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
        folder = root / name.replace(" ", "_").replace(",", "")
        shutil.copytree(fp32, folder)
        quantize_dynamic(str(fp32 / "model.onnx"), str(folder / "model.onnx"), weight_type=QuantType.QInt8, **options)
        result["variants"][name] = cosine(folder)
    lines = ["# int8 weights per tensor or per channel", "", f"Command: `{result['meta_info']['command']}`", "",
             f"`{args.model}` at depth {args.depth}, one ONNX graph; cosine of its embeddings to torch fp32 at the same "
             f"depth over {len(texts)} STS-B test sentences.", "", "| graph | mean cosine | min cosine |",
             "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v['mean']:.4f} | {v['min']:.4f} |" for k, v in result["variants"].items()]
    write_result(args.out, result, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
