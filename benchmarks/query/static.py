"""Depth 0: a static-embedding query encoder (model2vec, distilled from the index model) against the kept index.

The query encoder is sentence-transformers' ``StaticEmbedding.from_distillation`` (model2vec) of the original,
followed by a ``Dense`` map into the original's space, fitted in closed form (ridge, strength chosen on a held-out
tenth; ``st_leap.exit_maps.ridge_solutions``) on 20,000 query-like texts of the corpus's training documents, the
same texts as the corpus maps of ``benchmarks.query.corpus``. Scored like every other query encoder: the corpus dev
split (held-out documents' texts) and the BEIR test queries against the original's full-depth document embeddings;
query speed-up over the original at full depth (torch fp32, 1 thread, batch 1 and 32, interleaved rounds).

Example::

    HF_HUB_OFFLINE=1 python -m benchmarks.query.static

Writes ``benchmarks/results/query/static.{json,md}``. Needs ``pip install "model2vec[distill]"``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, StaticEmbedding

from benchmarks._common import command_line, meta_info, results_dir, write_result
from benchmarks.query.corpus import DEV_DOCUMENTS, SEED, TASKS, test_evaluator
from st_leap import resources
from st_leap.corpus import query_texts, read_corpus, split_documents
from st_leap.diagnostics import time_encode
from st_leap.evaluation.dev import corpus_depth_evaluator
from st_leap.exit_maps import ridge_solutions
from st_leap.teacher import compute_teacher_embeddings

RIDGE_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def fit_map(x: torch.Tensor, y: torch.Tensor, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Ridge ``y ~ x W + b``, the strength picked by the held-out tenth's mean cosine, refitted on everything."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    held, fitting = order[: len(x) // 10], order[len(x) // 10 :]
    scores = {}
    for lam, weight, bias in ridge_solutions(x[fitting], y[fitting], [c * len(fitting) for c in RIDGE_GRID]):
        pred = x[held].double() @ weight + bias
        scores[lam / len(fitting)] = float(F.cosine_similarity(pred, y[held].double(), dim=-1).mean())
    best = max(scores, key=scores.get)
    ((_, weight, bias),) = ridge_solutions(x, y, [best * len(x)])
    return weight.float(), bias.float(), {"ridge": best, "heldout_cosine": scores[best], "grid": scores}


def static_encoder(original_path: str, texts: list[str], targets: torch.Tensor) -> tuple[SentenceTransformer, dict]:
    start = time.perf_counter()
    static = StaticEmbedding.from_distillation(original_path, device="cpu", pca_dims=256)
    distill_seconds = time.perf_counter() - start
    bare = SentenceTransformer(modules=[static], device="cpu")
    x = bare.encode(texts, batch_size=256, convert_to_tensor=True, show_progress_bar=True).cpu()
    weight, bias, fit = fit_map(x, targets)
    dense = Dense(x.shape[1], targets.shape[1], bias=True, activation_function=torch.nn.Identity())
    with torch.no_grad():
        dense.linear.weight.copy_(weight.T)
        dense.linear.bias.copy_(bias)
    model = SentenceTransformer(modules=[static, dense, Normalize()], device="cpu")
    return model, {**fit, "distill_seconds": distill_seconds, "fit_seconds": time.perf_counter() - start,
                   "texts": len(texts), "dim": int(x.shape[1])}


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Depth 0: a model2vec static query encoder with a corpus-fitted map, against the original's index", "",
             f"Command: `{result['meta_info']['command']}`", "",
             "| task | dev NDCG@10 (original) | test NDCG@10 (original) | speed-up batch 1 | speed-up batch 32 | "
             "fit (distill + map) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for task, row in result["tasks"].items():
        lines.append(
            f"| {task} | {100 * row['dev']:.2f} ({100 * row['dev_reference']:.2f}) | {100 * row['test']:.2f} "
            f"({100 * row['test_reference']:.2f}) | {row['speedup'][1]:.1f}x | {row['speedup'][32]:.1f}x | "
            f"{row['fit']['fit_seconds']:.0f} s |"
        )
    lines += ["", "Map: ridge on 256-d static embeddings (PCA of the distilled vocabulary) into the original's 384-d "
              "space; held-out cosine per task in the JSON."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", default="minilm")
    parser.add_argument("--map-texts", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(results_dir("query") / "static"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    original_path = resources.resolve_model(args.original)
    reference = SentenceTransformer(original_path, device="cpu")
    result: dict[str, Any] = {"original": original_path, "tasks": {},
                              "meta_info": meta_info(command_line("benchmarks.query.static", argv))}
    for task in TASKS:
        corpus = read_corpus(resources.beir_dir(task))
        train, _ = split_documents(corpus, DEV_DOCUMENTS, seed=SEED)
        texts = query_texts(corpus, train, max_texts=args.map_texts, seed=SEED)[0]
        targets = torch.as_tensor(compute_teacher_embeddings(reference, texts, None, shared_cache=True))
        model, fit = static_encoder(original_path, texts, targets)
        dev = corpus_depth_evaluator(resources.beir_dir(task), reference, None, dev_documents=DEV_DOCUMENTS,
                                     seed=SEED, batch_size=32)
        test = test_evaluator(task, reference, None)
        queries = list(test.queries.values())
        row = {"fit": fit, "dev": dev.ndcg(model), "dev_reference": dev.reference_ndcg, "test": test.ndcg(model),
               "test_reference": test.reference_ndcg, "speedup": {}, "timings": {}}
        torch.set_num_threads(1)
        for batch_size, n in ((1, 64), (32, 256)):
            timings = time_encode(reference, queries[:n], {"full": {}, "static": {}}, batch_size=batch_size,
                                  repeats=args.repeats, models={"static": model})
            row["speedup"][batch_size] = timings["static"]["speedup"]
            row["timings"][batch_size] = timings
        torch.set_num_threads(2)
        result["tasks"][task] = row
        write_result(args.out, result, markdown(result))
    print(markdown(result))
    print(f"wrote {Path(args.out).with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
