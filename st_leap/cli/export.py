"""``st-leap export``: write a model's operating point as an ONNX Runtime / OpenVINO folder."""

from __future__ import annotations

import argparse

from st_leap.cli.common import positive_int

DESCRIPTION = """Export a model's exit setting for one role to ONNX Runtime or OpenVINO.

A static depth (the role's truncate_layers without an exit threshold, full depth when neither is set, or --depth N)
is exported as ONE graph: embeddings, the first N layers, pooling, normalize and, when the model holds exit maps,
the map of layer N. A per-sample exit (an exit threshold) is exported as segments (one graph per layer) with the
exit loop between them. The folder loads with st_leap.load(OUT) and holds a README.md and st_leap_export.json.

A query encoder for a kept index (st-leap fit-query-encoder) exports one graph per route: queries run the shallow
encoder (its depth, or --depth N), documents and plain encode the index model at full depth, so the folder serves
both as the model did. --role query (or document) exports that route alone; the folder then refuses the others.

example: st-leap export my-model --backend onnx --quantize int8 --role query --out my-model-onnx"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="Export the chosen exit setting to ONNX Runtime / OpenVINO (one graph for a static depth)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="Model folder, Hub id, or 'minilm'/'mpnet'")
    parser.add_argument("--backend", choices=["onnx", "openvino"], required=True, help="Runtime to export for")
    parser.add_argument("--quantize", choices=["int8"], default=None, help="int8 weights (default: fp32)")
    parser.add_argument(
        "--role", choices=["query", "document", "default"], default=None,
        help="Whose exit setting to export: encode_query, encode_document or plain encode (default: default)",
    )
    parser.add_argument("--depth", type=positive_int, default=None, help="Export this static depth instead")
    parser.add_argument("--out", default=None, help="Output folder (default: <model>-<backend>[-int8][-<role>])")
    return parser


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from st_leap import from_pretrained, resources
    from st_leap.backends import export, read_export_info
    from st_leap.cli.common import hub_id_of

    model_path = resources.resolve_model(args.model)
    model = from_pretrained(model_path, base_model=hub_id_of(model_path))
    suffix = "".join(f"-{part}" for part in (args.backend, args.quantize, args.role) if part)
    out = Path(args.out or f"{Path(model_path).name or 'model'}{suffix}")
    export(model, out, args.backend, quantize=args.quantize, role=args.role, depth=args.depth)
    info = read_export_info(out) or {}
    what = {
        "static": f"one graph at depth {info.get('depth')}",
        "routes": "one graph per route: queries the query encoder, documents the index model",
    }.get(info.get("kind"), "segments (per-sample exit)")
    print(f"exported {model_path} ({what}, {args.backend}, {args.quantize or 'fp32'}, role {info.get('role')}) to {out}")
    print(f"load it with: st_leap.load({str(out)!r})")
    return 0
