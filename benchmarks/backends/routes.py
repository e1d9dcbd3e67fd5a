"""Every role of an exported query encoder against the same role of the model it came from.

A query encoder for a kept index (``st-leap fit-query-encoder``, one ``Router`` model) is exported without a role,
so the folder holds a query graph and a document graph (``st_leap.backends.export``), in fp32 and in int8. Each
role of each export (``encode_query``, ``encode_document``, plain ``encode``) encodes the same texts as the source
model's same role; reported is the cosine of the two embeddings (mean and minimum). Queries are STS-B test sentences
and, with ``--corpus``, the corpus's documents are encoded for the document roles.

    HF_HUB_OFFLINE=1 python -m benchmarks.backends.routes --model st_leap_demo/query_encoder \\
        --corpus ../shared/data/beir/scifact --documents 500

Writes ``benchmarks/results/backends/routes.{json,md}``.
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

CALLS = {"query": "encode_query", "document": "encode_document", "default": "encode"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A saved query encoder for a kept index (a Router model)")
    parser.add_argument("--corpus", default=None, help="The index's documents (BEIR folder, corpus.jsonl, text file)")
    parser.add_argument("--documents", type=int, default=500, help="How many of the corpus's documents to encode")
    parser.add_argument("--queries", type=int, default=500, help="How many STS-B test sentences to encode")
    parser.add_argument("--work-dir", default="runs/routes_export")
    parser.add_argument("--out", default=str(results_dir("backends") / "routes"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    root = Path(args.work_dir)
    shutil.rmtree(root, ignore_errors=True)
    model = st_leap.load(args.model, device="cpu")
    queries = resources.stsb_sentences("test")[: args.queries]
    texts = {"query": queries, "document": queries, "default": queries}
    if args.corpus:
        from st_leap.corpus import read_corpus

        documents = [d for d in read_corpus(args.corpus).documents if d][: args.documents]
        texts.update(document=documents, default=documents)
    want = {role: torch.as_tensor(getattr(model, call)(texts[role], batch_size=32)) for role, call in CALLS.items()}
    routes_differ = float(torch.nn.functional.cosine_similarity(
        want["query"], torch.as_tensor(model.encode_document(queries, batch_size=32)), dim=-1).mean())
    result: dict[str, Any] = {
        "model": args.model, "texts": {role: len(t) for role, t in texts.items()}, "exports": {},
        "query_vs_document_route_cosine": routes_differ,
        "meta_info": meta_info(command_line("benchmarks.backends.routes", argv)),
    }
    for quantize in (None, "int8"):
        folder = export(model, root / (quantize or "fp32"), "onnx", quantize=quantize)
        served = st_leap.load(str(folder))
        rows = {}
        for role, call in CALLS.items():
            got = torch.as_tensor(getattr(served, call)(texts[role], batch_size=32))
            cos = torch.nn.functional.cosine_similarity(got, want[role], dim=-1)
            rows[role] = {"mean": float(cos.mean()), "min": float(cos.min())}
        result["exports"][quantize or "fp32"] = rows
    lines = [
        "# Every role of an exported query encoder", "", f"Command: `{result['meta_info']['command']}`", "",
        f"`{args.model}` exported without a role (a query graph and a document graph, ONNX Runtime). Cosine of each "
        "role's embeddings to the source model's same role: queries over "
        f"{len(queries)} STS-B test sentences, documents over {len(texts['document'])} "
        f"{'corpus documents' if args.corpus else 'STS-B test sentences'}. The source's two routes differ (mean "
        f"cosine {routes_differ:.3f} between its query and document embeddings of the same sentences), so a route "
        "served for the other would show here.", "",
        "| export | role | mean cosine | min cosine |", "| --- | --- | ---: | ---: |",
    ]
    for name, rows in result["exports"].items():
        lines += [f"| {name} | {role} ({CALLS[role]}) | {row['mean']:.4f} | {row['min']:.4f} |"
                  for role, row in rows.items()]
    write_result(args.out, result, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
