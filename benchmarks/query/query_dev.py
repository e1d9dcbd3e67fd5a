"""A dev signal from real queries, never the test split: does a lever that wins on the documents' own texts win on
queries too?

``st-leap fit-query-encoder`` chooses on held-out documents' texts (titles, sentences, spans) retrieving their own
document. Those are pieces of documents, not queries, and on SciFact a lever that won there lost on the test queries.
This harness scores trained query encoders on the queries of the same collection that are *not* in its BEIR test
split: a seeded half of them (the other half is the stand-in for a user's log of past queries, ``--write-log``,
for ``st-leap fit-query-encoder --queries``; never scored here), two ways:

- ``labelled`` (SciFact only): the training claims with evidence documents in ``queries.jsonl``'s metadata (SciFact's
  own training annotations, the BEIR train split), NDCG@10 against the index;
- ``agreement`` (both): every non-test query, scored against the index model's own full-depth top 10 as relevant
  (NDCG@10; 100 means the original's ranking), and the mean cosine to the original's query embedding. No labels.

The test queries and qrels are read only to leave them out.

Example::

    HF_HUB_OFFLINE=1 python -m benchmarks.query.query_dev --task scifact runs/levers/scifact/d3 \\
        runs/levers/scifact/d3_hardneg3

Writes ``benchmarks/results/query/query_dev_<task>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

import st_leap
from benchmarks._common import command_line, meta_info, results_dir, write_result
from benchmarks.query.inits import settings
from st_leap import resources
from st_leap.corpus import read_corpus
from st_leap.evaluation import QueryDepthEvaluator
from st_leap.query_encoder import read_result
from st_leap.teacher import index_embeddings

TOP_K = 10
SEED = 12345


def non_test_queries(task: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """The queries of ``task`` outside its BEIR test qrels whose text is not a test query's too (a handful repeat
    one), and the evidence documents of those that have them (SciFact's training claims carry them in ``metadata``;
    NFCorpus's metadata holds a URL, not documents)."""
    folder = Path(resources.beir_dir(task))
    test = set()
    for split in (folder / "qrels").glob("test.tsv"):
        with split.open(encoding="utf-8") as handle:
            test.update(line.split("\t", 1)[0] for line in handle if not line.startswith("query"))
    queries: dict[str, str] = {}
    evidence: dict[str, set[str]] = {}
    with (folder / "queries.jsonl").open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    test_texts = {row["text"].strip().lower() for row in rows if row["_id"] in test}
    for row in rows:
        if row["_id"] in test or row["text"].strip().lower() in test_texts:
            continue
        queries[row["_id"]] = row["text"]
        meta = row.get("metadata") or {}
        docs = {key for key, value in meta.items() if isinstance(value, list)}
        if docs:
            evidence[row["_id"]] = docs
    if not queries:
        raise ValueError(f"{folder}: no query outside the test qrels")
    return queries, evidence


def split_queries(queries: dict[str, str], seed: int = SEED) -> tuple[list[str], list[str]]:
    """The non-test query ids in two seeded halves: ``(log, held_out)``."""
    ids = sorted(queries)
    random.Random(seed).shuffle(ids)
    half = len(ids) // 2
    return ids[:half], ids[half:]


def evaluators(task: str, reference: SentenceTransformer) -> dict[str, QueryDepthEvaluator]:
    corpus = read_corpus(resources.beir_dir(task))
    documents = dict(zip(corpus.ids, corpus.documents))
    embeddings = index_embeddings(reference, corpus.documents)
    queries, evidence = non_test_queries(task)
    held_out = split_queries(queries)[1]
    queries = {q: queries[q] for q in held_out}
    evidence = {q: docs for q, docs in evidence.items() if q in queries}
    out: dict[str, QueryDepthEvaluator] = {}
    labelled = {q: {d for d in docs if d in documents} for q, docs in evidence.items()}
    labelled = {q: docs for q, docs in labelled.items() if docs}
    if labelled:
        out["labelled"] = QueryDepthEvaluator(
            {q: queries[q] for q in labelled}, documents, labelled, reference=reference, corpus_embeddings=embeddings,
            name="labelled", batch_size=64,
        )
    # The original's own top 10 of every non-test query, as relevant: agreement with the index model's ranking.
    reference_queries = reference.encode_query(list(queries.values()), batch_size=64, convert_to_tensor=True).cpu()
    scores = torch.nn.functional.normalize(reference_queries, dim=-1) @ torch.nn.functional.normalize(
        torch.as_tensor(embeddings, dtype=torch.float32), dim=-1).T
    top = scores.topk(TOP_K, dim=-1).indices.tolist()
    pseudo = {q: {corpus.ids[i] for i in row} for q, row in zip(queries, top)}
    out["agreement"] = QueryDepthEvaluator(
        queries, documents, pseudo, reference=reference, corpus_embeddings=embeddings, name="agreement", batch_size=64,
    )
    return out


def score_run(path: str, evals: dict[str, QueryDepthEvaluator]) -> dict[str, Any]:
    record = read_result(path)
    depth = record["depth"]
    model = st_leap.load(path, device="cpu")
    row: dict[str, Any] = {"path": path, "depth": depth, "steps": record["steps"],
                           "max_steps": record["config"]["max_steps"], "settings": settings(record),
                           "corpus_dev": record["dev"]["ndcg@10"]}
    for name, evaluator in evals.items():
        evaluator.depths = [depth]
        metrics = evaluator(model)
        row[name] = {"ndcg@10": metrics[f"{name}_depth{depth}_ndcg@10"], "cosine": metrics[f"{name}_depth{depth}_cosine"],
                     "reference_ndcg@10": metrics[f"{name}_reference_ndcg@10"], "queries": len(evaluator.queries)}
    return row


def markdown(result: dict[str, Any]) -> str:
    rows = result["runs"]
    has_labelled = any("labelled" in row for row in rows)
    lines = [
        f"# Real-query dev signal on {result['task']} (non-test queries only)", "",
        f"Command: `{result['meta']['command']}`", "",
        "Corpus dev: the run's own signal (held-out documents' texts). Labelled: SciFact's training claims with "
        "evidence documents (never the test split). Agreement: every non-test query against the index model's own "
        "top 10 (100 = the original's ranking), and the cosine to its query embedding.", "",
    ]
    reference = rows[0] if rows else {}
    if has_labelled and "labelled" in reference:
        lines.append(f"The index model at full depth on the labelled queries: "
                     f"{100 * reference['labelled']['reference_ndcg@10']:.2f} NDCG@10 "
                     f"({reference['labelled']['queries']} queries).")
    if "agreement" in reference:
        lines.append(f"Agreement queries: {reference['agreement']['queries']}.")
    lines += ["", "| run | depth | settings | steps (of schedule) | corpus dev NDCG@10 |"
              + (" labelled NDCG@10 |" if has_labelled else "") + " agreement NDCG@10 | cosine |",
              "| --- | ---: | --- | ---: | ---: |" + (" ---: |" if has_labelled else "") + " ---: | ---: |"]
    for row in rows:
        labelled = f" {100 * row['labelled']['ndcg@10']:.2f} |" if has_labelled and "labelled" in row else (
            " |" if has_labelled else "")
        lines.append(
            f"| `{row['path']}` | {row['depth']} | {row['settings']} | {row['steps']} ({row['max_steps']}) | "
            f"{100 * row['corpus_dev']:.2f} |{labelled} {100 * row['agreement']['ndcg@10']:.2f} | "
            f"{row['agreement']['cosine']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="folders written by st-leap fit-query-encoder")
    parser.add_argument("--task", required=True, choices=("scifact", "nfcorpus"))
    parser.add_argument("--original", default="minilm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--write-log", default=None, metavar="FILE",
                        help="write the other half of the non-test queries, one a line (a stand-in query log), and stop")
    args = parser.parse_args(argv)
    if args.write_log:
        queries = non_test_queries(args.task)[0]
        log = split_queries(queries)[0]
        Path(args.write_log).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write_log).write_text("".join(queries[q].replace("\n", " ") + "\n" for q in log), encoding="utf-8")
        print(f"wrote {len(log)} queries to {args.write_log}")
        return 0
    torch.set_num_threads(args.threads)
    reference = SentenceTransformer(resources.resolve_model(args.original), device="cpu")
    evals = evaluators(args.task, reference)
    runs = [score_run(path.rstrip("/"), evals) for path in args.runs]
    result = {"meta": meta_info(command_line("benchmarks.query.query_dev", argv)), "task": args.task, "runs": runs}
    out = Path(args.out) if args.out else results_dir("query") / f"query_dev_{args.task}"
    write_result(out, result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
