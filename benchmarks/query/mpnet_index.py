"""A 12-layer index: all-mpnet-base-v2 embeds a BEIR corpus once at full depth (into st_leap's shared cache, the
pass ``st-leap fit-query-encoder mpnet --corpus ...`` then skips), and its own full-depth queries are scored against
it: the reference every query encoder for that index is measured against.

    HF_HUB_OFFLINE=1 python -m benchmarks.query.mpnet_index --tasks scifact

Writes ``benchmarks/results/query/mpnet_index.{json,md}``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

from benchmarks._common import command_line, meta_info, results_dir, write_result
from st_leap import resources
from st_leap.corpus import read_corpus
from st_leap.evaluation.beir import load_beir_folder
from st_leap.evaluation.calibration import ndcg_at_k
from st_leap.teacher import index_embeddings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mpnet")
    parser.add_argument("--tasks", default="scifact", help="comma-separated: scifact, nfcorpus")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(results_dir("query") / "mpnet_index"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = SentenceTransformer(resources.resolve_model(args.model), device="cpu")
    result: dict[str, Any] = {"model": args.model, "tasks": {},
                              "meta_info": meta_info(command_line("benchmarks.query.mpnet_index", argv))}
    for task in args.tasks.split(","):
        folder = resources.beir_dir(task)
        corpus = read_corpus(folder)
        start = time.perf_counter()
        documents = index_embeddings(model, corpus.documents)  # cached: fit-query-encoder reads the same pass
        index_seconds = time.perf_counter() - start
        _, queries, qrels = load_beir_folder(folder)
        query_ids = [q for q in queries if q in qrels]
        start = time.perf_counter()
        embedded = model.encode_query([queries[q] for q in query_ids], batch_size=32, show_progress_bar=False)
        query_seconds = time.perf_counter() - start
        ndcg = ndcg_at_k(embedded, documents, query_ids, corpus.ids, qrels)
        result["tasks"][task] = {"ndcg@10": ndcg, "documents": len(corpus), "queries": len(query_ids),
                                 "index_seconds": index_seconds, "query_seconds": query_seconds}
        print(task, result["tasks"][task], flush=True)
    lines = ["# A 12-layer index: all-mpnet-base-v2 at full depth", "", f"Command: `{result['meta_info']['command']}`",
             "", f"`{args.model}` embeds each corpus once (title + text, its own max length; cached in st_leap's shared "
             f"cache) on {args.threads} threads; its full-depth test queries against that index, NDCG@10 x 100 "
             "(MTEB lists 65.57 for SciFact and 33.29 for NFCorpus).", "",
             "| task | documents | queries | NDCG@10 | index pass (min) |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {t} | {r['documents']:,} | {r['queries']} | {r['ndcg@10']:.2f} | {r['index_seconds'] / 60:.1f} |"
              for t, r in result["tasks"].items()]
    write_result(args.out, result, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
