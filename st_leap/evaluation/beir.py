from __future__ import annotations

import csv
import gzip
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_leap.exit_policy import ExitStats
from st_leap.model import MODEL_DEFAULT, effective_exit_settings, exit_kwargs, last_call_stats, load_model, model_name
from st_leap.reporting import run_info

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

NDCG_K_VALUES = (1, 3, 5, 10)


def load_beir_folder(
    data_folder: str | Path, split: str = "test"
) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    """Read a BEIR-format folder: ``(corpus, queries, qrels)``.

    Accepts ``corpus.jsonl`` or ``corpus.jsonl.gz`` (and the same for queries). Only the queries that have qrels in
    ``split`` are returned, as BEIR's ``GenericDataLoader`` does.

    Raises:
        FileNotFoundError: naming the missing file (e.g. a folder that holds queries and qrels but no corpus).
    """
    folder = Path(data_folder)

    def find(stem: str) -> Path:
        for candidate in (folder / f"{stem}.jsonl", folder / f"{stem}.jsonl.gz"):
            if candidate.exists():
                return candidate
        raise FileNotFoundError(
            f"BEIR folder {folder} has no {stem}.jsonl or {stem}.jsonl.gz"
            + (" (this dataset ships without a corpus, so it cannot be evaluated)" if stem == "corpus" else "")
        )

    def read_jsonl(path: Path) -> list[dict[str, Any]]:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    qrels_path = folder / "qrels" / f"{split}.tsv"
    corpus_path = find("corpus")
    if not qrels_path.exists():
        raise FileNotFoundError(f"BEIR folder {folder} has no qrels/{split}.tsv")
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)  # header: query-id, corpus-id, score
        for row in reader:
            if len(row) >= 3:
                qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
    corpus = {
        str(doc["_id"]): {"title": doc.get("title") or "", "text": doc.get("text") or ""}
        for doc in read_jsonl(corpus_path)
    }
    queries = {str(q["_id"]): q["text"] for q in read_jsonl(find("queries")) if str(q["_id"]) in qrels}
    return corpus, queries, qrels


def document_text(doc: dict[str, str] | str, sep: str = " ") -> str:
    """A BEIR document as the text the model reads: ``title + sep + text``, or the text alone without a title.

    This is what mteb does (``(title + " " + text).strip()``), so both paths score the same strings.
    """
    if isinstance(doc, str):
        return doc
    title = doc.get("title") or ""
    text = doc.get("text") or ""
    return (title + sep + text).strip() if title else text.strip()


class BEIRModel:
    """Duck-typed model for BEIR's ``DenseRetrievalExactSearch``: encodes with the given exit settings.

    BEIR calls ``encode_queries(queries, batch_size=..., show_progress_bar=..., convert_to_tensor=...)`` and
    ``encode_corpus(corpus, ...)`` with fixed arguments, so the exit settings live here. ``query_stats`` and
    ``corpus_stats`` count where the texts stopped.

    Args:
        model: An st_leap model (or a path / Hub id, loaded with :func:`st_leap.from_pretrained`).
        exit_threshold: theta; ``None`` = full depth; left out, the model's saved default.
        exit_patience: k; left out, the model's saved default.
        exit_min_layer: l_min; left out, the model's saved default.
        sep: Separator between a document's title and text (BEIR and mteb use a space).

    Example:
        ::

            from beir.retrieval.evaluation import EvaluateRetrieval
            from beir.retrieval.search.dense import DenseRetrievalExactSearch
            from st_leap.evaluation.beir import BEIRModel, load_beir_folder

            corpus, queries, qrels = load_beir_folder("../shared/data/beir/scifact")
            retriever = EvaluateRetrieval(DenseRetrievalExactSearch(BEIRModel(model, exit_threshold=0.95)),
                                          score_function="cos_sim")
            ndcg, _map, recall, precision = retriever.evaluate(qrels, retriever.retrieve(corpus, queries), [1, 3, 5, 10])
    """

    def __init__(
        self,
        model: SentenceTransformer | str,
        *,
        exit_threshold: float | None | Any = MODEL_DEFAULT,
        exit_patience: int | Any = MODEL_DEFAULT,
        exit_min_layer: int | None | Any = MODEL_DEFAULT,
        sep: str = " ",
    ) -> None:
        self.model = load_model(model)
        self.exit_settings = exit_kwargs(exit_threshold, exit_patience, exit_min_layer)
        self.sep = sep
        self.query_stats = ExitStats()
        self.corpus_stats = ExitStats()

    def encode_queries(self, queries: Sequence[str], batch_size: int = 32, **kwargs: Any) -> Any:
        embeddings = self.model.encode_query(list(queries), batch_size=batch_size, **self.exit_settings, **kwargs)
        self.query_stats.merge(last_call_stats(self.model, len(queries)))
        return embeddings

    def encode_corpus(
        self, corpus: Sequence[dict[str, str]] | dict[str, list[str]], batch_size: int = 32, **kwargs: Any
    ) -> Any:
        if isinstance(corpus, dict):  # BEIR also passes {"title": [...], "text": [...]}
            titles = corpus.get("title") or [""] * len(corpus["text"])
            docs = [{"title": t, "text": x} for t, x in zip(titles, corpus["text"], strict=True)]
        else:
            docs = list(corpus)
        texts = [document_text(doc, self.sep) for doc in docs]
        embeddings = self.model.encode_document(texts, batch_size=batch_size, **self.exit_settings, **kwargs)
        self.corpus_stats.merge(last_call_stats(self.model, len(texts)))
        return embeddings


def evaluate_beir(
    model: SentenceTransformer | str,
    data_folder: str | Path,
    *,
    exit_threshold: float | None | Any = MODEL_DEFAULT,
    exit_patience: int | Any = MODEL_DEFAULT,
    exit_min_layer: int | None | Any = MODEL_DEFAULT,
    k_values: Sequence[int] = NDCG_K_VALUES,
    split: str = "test",
    batch_size: int = 32,
    score_function: str = "cos_sim",
    show_progress_bar: bool = True,
) -> dict[str, Any]:
    """Score a model with early exit on a BEIR-format folder with ``DenseRetrievalExactSearch`` + ``EvaluateRetrieval``.

    Returns:
        A JSON-ready dict: ``ndcg`` (``{"NDCG@1": ..., "NDCG@10": ...}``, fractions as BEIR gives them), ``map``,
        ``recall``, ``precision``, the exit statistics of queries, corpus and both, the exit settings really used,
        the dataset sizes and timing.
    """
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    st_model = load_model(model)
    adapter = BEIRModel(
        st_model, exit_threshold=exit_threshold, exit_patience=exit_patience, exit_min_layer=exit_min_layer
    )
    corpus, queries, qrels = load_beir_folder(data_folder, split=split)
    search = DenseRetrievalExactSearch(adapter, batch_size=batch_size, show_progress_bar=show_progress_bar)
    retriever = EvaluateRetrieval(search, k_values=list(k_values), score_function=score_function)
    start = time.perf_counter()
    results = retriever.retrieve(corpus, queries)
    seconds = time.perf_counter() - start
    ndcg, _map, recall, precision = retriever.evaluate(qrels, results, list(k_values))
    both = ExitStats().merge(adapter.query_stats).merge(adapter.corpus_stats)
    return {
        "measured": f"BEIR retrieval (DenseRetrievalExactSearch, {score_function}) on {Path(data_folder).name}/{split}",
        "dataset": str(data_folder),
        "split": split,
        "model": model_name(st_model, model if isinstance(model, str) else None),
        "exit_settings": effective_exit_settings(st_model, adapter.exit_settings),
        "num_queries": len(queries),
        "num_documents": len(corpus),
        "ndcg": ndcg,
        "map": _map,
        "recall": recall,
        "precision": precision,
        "exit_stats": {
            "all": both.to_dict(),
            "queries": adapter.query_stats.to_dict(),
            "corpus": adapter.corpus_stats.to_dict(),
        },
        "retrieve_seconds": seconds,
        "run_info": run_info(batch_size=batch_size),
    }
