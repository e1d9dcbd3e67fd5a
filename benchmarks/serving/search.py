"""End to end, the number a search user feels: a query sent to ``st-leap serve``, its vector searched in a vector
store, per query.

For each task (``--tasks``: scifact, nfcorpus or a BEIR folder) the corpus is embedded once with the index model
(``--index-model``, default all-MiniLM-L6-v2 at full depth: the model that built the index, whose ``encode_document``
every served model shares; cached in ``<work-dir>/index_<task>.npy``) and the unit vectors are put into two stores,
both searched exactly (flat, inner product of unit vectors = cosine): a FAISS ``IndexFlatIP`` and a LanceDB table
without a vector index. Then each model (``--models NAME=SPEC``, the spec of ``benchmarks.serving.load``: a folder,
``minilm``, ``int8:SOURCE``) is served by one ``st-leap serve`` subprocess on 127.0.0.1, and the task's test queries
go one at a time, batch 1, as a search front end sends them:

1. **encoder**: POST ``/v1/embeddings`` (``input_type`` query) on one persistent connection, the JSON answer decoded
   into a float32 vector and scaled to unit length (the HTTP round trip, the server's batching wait included);
2. **store**: the top-``--top-k`` documents of that vector in the FAISS index and in the LanceDB table (each query
   searches both; which one goes first alternates from query to query).

Per store, a query's **total** is its encoder time plus that store's search time. The table reports p50 / p99 of
the total, the encoder and the store, the encoder's share of the total (median over queries of encoder / total),
NDCG@10 (``--top-k``) of the store's ranking against the task's qrels (trec_eval's linear gain and log2 discount,
as BEIR reports it), and how many queries' rankings equal a numpy brute-force ranking of the same vector (exact
search: all of them, up to ties). The client, the stores and the server share the machine's cores.

    HF_HUB_OFFLINE=1 python -m benchmarks.serving.search
    HF_HUB_OFFLINE=1 python -m benchmarks.serving.search --tasks scifact --queries 100 \\
        --models minilm=minilm minilm-int8=int8:minilm qe-int8=int8:runs/demo/query-encoder

Needs ``faiss-cpu`` and ``lancedb`` (``pip install 'st-leap[stores]'``). Writes
``benchmarks/results/serving/search.{json,md}``; exits 1 when a request failed.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import command_line, meta_info, results_dir, write_result
from benchmarks.serving._server import (
    DEFAULT_TASKS,
    DEFAULT_WORK_DIR,
    SPEC_HELP,
    Client,
    ServerProcess,
    load_like_serve,
    prepare_model,
    query_body,
    read_task,
    split_list,
    task_label,
)
from st_leap.stores import require_package

DEFAULT_SEARCH_MODELS = ("minilm=minilm", "minilm-int8=int8:minilm", "qe-int8=int8:runs/demo/query-encoder")
STORES = ("faiss", "lancedb")
MAX_ERRORS_KEPT = 10


# ------------------------------------------------------------------------------------------------------- index
def index_vectors(
    data: Any, label: str, index_model: str, work_dir: str | Path, batch_size: int = 32
) -> tuple[list[str], np.ndarray]:
    """The task's corpus ids and their unit vectors by the index model's ``encode_document``, embedded once and
    cached in ``<work_dir>/index_<task>.npy`` (with ``index_<task>.json`` saying what made it: the model and the
    ids; a cache of another model or corpus is made again).

    Args:
        data: The task's test split (:func:`benchmarks.serving._server.read_task`).
        label: The task's name (``scifact``, or a BEIR folder's name), for the cache's file name.
        index_model: The model that built the index (a folder or a packaged model's name).
        work_dir: Where the cache goes.
        batch_size: Documents per encode call.

    Returns:
        ``(ids, vectors)``: the corpus ids in file order and ``(len(ids), D)`` float32 unit rows.
    """
    from st_leap import resources

    ids, documents = list(data.corpus), list(data.corpus.values())
    resolved = resources.resolve_model(index_model)
    made = {
        "index_model": index_model,
        "resolved": str(Path(resolved).resolve()) if Path(resolved).exists() else resolved,
        "documents": len(ids),
        "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        "texts_sha256": hashlib.sha256("\n".join(documents).encode()).hexdigest(),
    }
    path = Path(work_dir) / f"index_{label}.npy"
    marker = path.with_suffix(".json")
    if path.is_file() and marker.is_file() and json.loads(marker.read_text()) == made:
        return ids, np.load(path)
    print(f"embedding {len(ids):,} documents of {label} with {index_model} (once: cached in {path})", flush=True)
    model = load_like_serve(resolved)
    vectors = np.asarray(
        model.encode_document(documents, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=True),
        dtype=np.float32,
    )
    vectors = unit(vectors)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    marker.write_text(json.dumps(made, indent=2) + "\n")
    return ids, vectors


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.clip(norms, 1e-12, None)


# ------------------------------------------------------------------------------------------------------ stores
class FaissStore:
    """A FAISS ``IndexFlatIP`` of the vectors (exact inner product), searched one query at a time.

    Args:
        ids: The document ids, one per row.
        vectors: ``(N, D)`` float32 unit rows.
        threads: FAISS's OpenMP threads.
    """

    name = "faiss"

    def __init__(self, ids: list[str], vectors: np.ndarray, threads: int = 1) -> None:
        faiss = require_package("faiss", "faiss-cpu", "the search benchmark's FAISS store")
        faiss.omp_set_num_threads(threads)
        self.ids = ids
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def search(self, query: np.ndarray, k: int) -> list[str]:
        """The ids of the ``k`` rows nearest ``query`` (highest inner product first)."""
        _, rows = self.index.search(query.reshape(1, -1), k)
        return [self.ids[i] for i in rows[0] if i >= 0]


class LanceStore:
    """A LanceDB table of the vectors (columns ``id``, ``vector``) without a vector index: every search is flat
    (exact), by dot product.

    Args:
        ids: The document ids, one per row.
        vectors: ``(N, D)`` float32 unit rows.
        folder: The database folder (made anew).
        table: The table's name.
    """

    name = "lancedb"

    def __init__(self, ids: list[str], vectors: np.ndarray, folder: str | Path, table: str) -> None:
        import pyarrow as pa

        lancedb = require_package("lancedb", "lancedb", "the search benchmark's LanceDB store")
        folder = Path(folder)
        if folder.exists():
            shutil.rmtree(folder)
        vector_type = pa.list_(pa.float32(), vectors.shape[1])
        data = pa.table(
            {
                "id": pa.array(ids, type=pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1)), type=vector_type
                ),
            }
        )
        self.table = lancedb.connect(str(folder)).create_table(table, data=data)
        self.folder = folder

    def search(self, query: np.ndarray, k: int) -> list[str]:
        """The ids of the ``k`` rows nearest ``query`` (highest dot product first)."""
        builder = self.table.search(query.astype(np.float32).tolist(), vector_column_name="vector")
        builder = builder.distance_type("dot") if hasattr(builder, "distance_type") else builder.metric("dot")
        result = builder.select(["id"]).limit(k).to_arrow()
        return [str(value) for value in result.column("id").to_pylist()]


def brute_force(vectors: np.ndarray, ids: list[str], query: np.ndarray, k: int) -> list[str]:
    """The ids of the ``k`` rows with the highest inner product with ``query`` (ties: the earlier row)."""
    scores = vectors @ query
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


# ------------------------------------------------------------------------------------------------------ scoring
def ndcg(ranking: list[str], judged: dict[str, int], k: int) -> float:
    """NDCG@k of one ranking with trec_eval's linear gain (the relevance) and log2 discount, as BEIR reports it.

    Args:
        ranking: Document ids, best first.
        judged: The query's qrels, ``{document id: relevance}``.
        k: The cut-off.

    Returns:
        NDCG@k in [0, 1] (0 for a query without a relevant document).
    """
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    gains = np.array([max(judged.get(doc, 0), 0) for doc in ranking[:k]], dtype=np.float64)
    ideal = np.array(sorted((r for r in judged.values() if r > 0), reverse=True)[:k], dtype=np.float64)
    idcg = float((ideal * discount[: len(ideal)]).sum())
    return float((gains * discount[: len(gains)]).sum()) / idcg if idcg > 0 else 0.0


def percentile_ms(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values) * 1e3, q)) if values else None


def run_queries(
    port: int,
    name: str,
    queries: list[tuple[str, str]],
    stores: list[Any],
    vectors: np.ndarray,
    ids: list[str],
    k: int,
    max_seconds: float,
    dimension: int,
) -> dict[str, Any]:
    """Each query once, batch 1: the encoder's round trip, then each store's search (the order alternates).

    Returns:
        ``records`` (per query: ``query_id``, ``encoder_s``, ``vector``, and per store ``<store>_s`` and
        ``<store>_ids``, plus ``exact_ids``), ``errors`` (messages) and ``capped`` (the time cap stopped it).
    """
    records: list[dict[str, Any]] = []
    errors: list[str] = []
    capped = False
    deadline = time.monotonic() + max_seconds
    with Client(port) as client:
        for number, (query_id, text) in enumerate(queries):
            if time.monotonic() > deadline:
                capped = True
                break
            began = time.perf_counter()
            try:
                reply = client.post_json("/v1/embeddings", query_body(name, text))
            except (OSError, http.client.HTTPException) as error:
                errors.append(f"{query_id}: {type(error).__name__}: {error}")
                continue
            if reply.status != 200:
                errors.append(f"{query_id}: HTTP {reply.status}: {reply.body[:200].decode(errors='replace')}")
                continue
            data = reply.json().get("data") or [{}]
            vector = np.asarray(data[0].get("embedding") or (), dtype=np.float32)
            if len(data) != 1 or vector.shape != (dimension,):
                errors.append(f"{query_id}: HTTP 200 with {len(data)} embedding(s) of shape {vector.shape}")
                continue
            vector = unit(vector)
            encoder_s = time.perf_counter() - began
            record: dict[str, Any] = {"query_id": query_id, "encoder_s": encoder_s}
            order = stores if number % 2 == 0 else stores[::-1]
            for store in order:
                started = time.perf_counter()
                found = store.search(vector, k)
                record[f"{store.name}_s"] = time.perf_counter() - started
                record[f"{store.name}_ids"] = found
            record["exact_ids"] = brute_force(vectors, ids, vector, k)
            record["vector"] = vector.tolist()
            records.append(record)
    return {"records": records, "errors": errors, "capped": capped}


def summarise(
    records: list[dict[str, Any]], qrels: dict[str, dict[str, int]], store_names: list[str], k: int
) -> list[dict[str, Any]]:
    """One row per store: p50 / p99 of total, encoder and store time, the encoder's share, NDCG@k, exact rankings."""
    rows = []
    encoder = [r["encoder_s"] for r in records]
    for store in store_names:
        search = [r[f"{store}_s"] for r in records]
        total = [e + s for e, s in zip(encoder, search)]
        share = [e / t for e, t in zip(encoder, total) if t > 0]
        scores = [ndcg(r[f"{store}_ids"], qrels.get(r["query_id"], {}), k) for r in records]
        rows.append(
            {
                "store": store,
                "queries": len(records),
                "total_p50_ms": percentile_ms(total, 50),
                "total_p99_ms": percentile_ms(total, 99),
                "encoder_p50_ms": percentile_ms(encoder, 50),
                "encoder_p99_ms": percentile_ms(encoder, 99),
                "store_p50_ms": percentile_ms(search, 50),
                "store_p99_ms": percentile_ms(search, 99),
                "encoder_share": float(np.median(share)) if share else None,
                f"ndcg@{k}": 100.0 * float(np.mean(scores)) if scores else None,
                "exact": sum(r[f"{store}_ids"] == r["exact_ids"] for r in records),
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------------ report
def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else f"{value:{spec}}"


def markdown(result: dict[str, Any]) -> str:
    info = result["run_info"]
    k = info["top_k"]
    lines = [
        "# End to end: a query through st-leap serve, then a vector store",
        "",
        f"Command: `{result['meta_info']['command']}`",
        "",
        f"Index: each task's corpus embedded once by `{info['index_model']}` (`encode_document`, unit vectors) into a "
        f"FAISS `IndexFlatIP` and a LanceDB table without a vector index (both exact: dot product of unit vectors). "
        f"Each query alone (batch 1) on one persistent connection to one `st-leap serve` on 127.0.0.1 "
        f"(`--threads {info['threads']}`, `--max-batch-size {info['max_batch_size']}`, `--max-wait-ms "
        f"{info['max_wait_ms']}`), then its top {k} in each store ({info['store_threads']} FAISS thread(s)). "
        "Encoder: the HTTP round trip with the JSON decoded into a unit vector. Store: one search. Total: the two "
        "added. Encoder share: median over queries of encoder / total. Exact: queries whose ranking equals a numpy "
        "brute-force ranking of the same vector. Client, stores and server share the machine's cores.",
        "",
        "| model | task | store | queries | total p50 ms | total p99 ms | encoder p50 ms | encoder p99 ms "
        f"| store p50 ms | store p99 ms | encoder share | NDCG@{k} | exact |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["summary"]:
        lines.append(
            f"| {row['model']} | {row['task']} | {row['store']} | {row['queries']}"
            f"{' (capped)' if row['capped'] else ''} "
            f"| {_fmt(row['total_p50_ms'])} | {_fmt(row['total_p99_ms'])} | {_fmt(row['encoder_p50_ms'])} "
            f"| {_fmt(row['encoder_p99_ms'])} | {_fmt(row['store_p50_ms'])} | {_fmt(row['store_p99_ms'])} "
            f"| {_fmt(100 * row['encoder_share'] if row['encoder_share'] is not None else None, '.0f')}% "
            f"| {_fmt(row[f'ndcg@{k}'])} | {row['exact']}/{row['queries']} |"
        )
    lines += ["", "| task | documents | dimension | queries sent |", "| --- | ---: | ---: | ---: |"]
    for task, about in result["tasks"].items():
        lines.append(f"| {task} | {about['documents']:,} | {about['dimension']} | {about['queries']} |")
    lines += ["", "| model | served folder | start to healthy (s) |", "| --- | --- | ---: |"]
    for name, served in result["servers"].items():
        lines.append(f"| {name} | `{served['path']}` | {served['start_s']:.1f} |")
    if result["errors"]:
        lines += ["", f"**{result['errors']} request(s) failed**: " + "; ".join(result["error_messages"][:5])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_SEARCH_MODELS),
        help=SPEC_HELP,
    )
    parser.add_argument(
        "--tasks", default=DEFAULT_TASKS, help="scifact, nfcorpus or BEIR folders (default: %(default)s)"
    )
    parser.add_argument(
        "--index-model",
        default="minilm",
        help="the model that embeds the corpus into the stores (default: %(default)s)",
    )
    parser.add_argument("--queries", type=int, default=None, help="test queries per task (default: all, file order)")
    parser.add_argument("--top-k", type=int, default=10, help="documents per search and NDCG cut-off (default: 10)")
    parser.add_argument(
        "--warmup", type=int, default=5, help="queries sent before each task's timed ones (default: 5)"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=300.0, help="time cap of one model on one task (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=2, help="the server's --threads (default: %(default)s)")
    parser.add_argument(
        "--max-batch-size", type=int, default=32, help="the server's --max-batch-size (default: %(default)s)"
    )
    parser.add_argument(
        "--max-wait-ms", type=float, default=0.0, help="the server's --max-wait-ms (default: %(default)s, its own)"
    )
    parser.add_argument("--store-threads", type=int, default=1, help="FAISS's OpenMP threads (default: %(default)s)")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for /health")
    parser.add_argument(
        "--per-query",
        action="store_true",
        help="keep every query's times, rankings and vector in the JSON (off: the summary only)",
    )
    parser.add_argument(
        "--work-dir", default=DEFAULT_WORK_DIR, help="index cache, stores, exports and logs (default: %(default)s)"
    )
    parser.add_argument("--out", default=str(results_dir("serving") / "search"))
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.max_seconds <= 0 or args.warmup < 0 or (args.queries is not None and args.queries < 1):
        parser.error("--top-k and --queries must be >= 1, --warmup >= 0, --max-seconds > 0")
    models = [prepare_model(spec, args.work_dir) for spec in args.models]
    tasks: dict[str, Any] = {}
    for task in split_list(args.tasks):
        label = task_label(task)
        data = read_task(task)
        ids, vectors = index_vectors(data, label, args.index_model, args.work_dir)
        queries = list(data.queries.items())[: args.queries]
        stores = [
            FaissStore(ids, vectors, threads=args.store_threads),
            LanceStore(ids, vectors, Path(args.work_dir) / "lancedb" / label, label),
        ]
        for store in stores:
            store.search(vectors[0], args.top_k)  # the first search opens files and warms caches
        tasks[label] = {"data": data, "ids": ids, "vectors": vectors, "queries": queries, "stores": stores}
    summary: list[dict[str, Any]] = []
    per_query: dict[str, dict[str, list[dict[str, Any]]]] = {}
    servers: dict[str, Any] = {}
    error_messages: list[str] = []
    errors = 0
    for served in models:
        server = ServerProcess(
            served.path,
            served.name,
            threads=args.threads,
            log_dir=f"{args.work_dir}/logs",
            start_timeout=args.start_timeout,
            args=["--max-batch-size", args.max_batch_size, "--max-wait-ms", args.max_wait_ms],
        )
        started = time.perf_counter()
        with server:
            health = server.health()
            servers[served.name] = {
                "path": served.path,
                "spec": served.spec,
                "start_s": time.perf_counter() - started,
                "lean_roles": health.get("lean_roles", []),
            }
            dimension = int(health["embedding_dimension"])
            for label, task in tasks.items():
                if dimension != task["vectors"].shape[1]:
                    raise SystemExit(
                        f"{served.name} answers {dimension}-dimensional vectors, the {label} index holds "
                        f"{task['vectors'].shape[1]}: serve a model of the index model's space"
                    )
                warm = task["queries"][: args.warmup]
                run_queries(
                    server.port,
                    served.name,
                    warm,
                    task["stores"],
                    task["vectors"],
                    task["ids"],
                    args.top_k,
                    args.max_seconds,
                    dimension,
                )
                done = run_queries(
                    server.port,
                    served.name,
                    task["queries"],
                    task["stores"],
                    task["vectors"],
                    task["ids"],
                    args.top_k,
                    args.max_seconds,
                    dimension,
                )
                errors += len(done["errors"])
                error_messages += done["errors"]
                rows = summarise(done["records"], task["data"].qrels, list(STORES), args.top_k)
                for row in rows:
                    row.update(model=served.name, task=label, capped=done["capped"], errors=len(done["errors"]))
                    print(
                        f"{served.name} {label} {row['store']}: {row['queries']} queries, total p50 "
                        f"{_fmt(row['total_p50_ms'])} ms (encoder {_fmt(row['encoder_p50_ms'])}, store "
                        f"{_fmt(row['store_p50_ms'])}), NDCG@{args.top_k} {_fmt(row[f'ndcg@{args.top_k}'])}",
                        flush=True,
                    )
                summary += rows
                if args.per_query:
                    per_query.setdefault(served.name, {})[label] = done["records"]
    result: dict[str, Any] = {
        "run_info": {
            "models": args.models,
            "index_model": args.index_model,
            "top_k": args.top_k,
            "queries": args.queries,
            "warmup": args.warmup,
            "max_seconds": args.max_seconds,
            "threads": args.threads,
            "max_batch_size": args.max_batch_size,
            "max_wait_ms": args.max_wait_ms,
            "store_threads": args.store_threads,
            "host": "127.0.0.1",
            "stores": {"faiss": "IndexFlatIP (exact)", "lancedb": "table without a vector index (flat, dot)"},
        },
        "tasks": {
            label: {
                "documents": len(task["ids"]),
                "dimension": int(task["vectors"].shape[1]),
                "queries": len(task["queries"]),
                "index_cache": str(Path(args.work_dir) / f"index_{label}.npy"),
            }
            for label, task in tasks.items()
        },
        "servers": servers,
        "summary": summary,
        "errors": errors,
        "error_messages": error_messages[:MAX_ERRORS_KEPT],
        "meta_info": meta_info(command_line("benchmarks.serving.search", argv), **_store_versions()),
    }
    if args.per_query:
        result["per_query"] = per_query
    text = markdown(result)
    write_result(args.out, result, text)
    print(text)
    return 1 if errors else 0


def _store_versions() -> dict[str, Any]:
    """The installed faiss and lancedb versions, for the run's metadata."""
    from importlib import metadata

    versions = {}
    for package in ("faiss-cpu", "lancedb"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"store_versions": versions}


if __name__ == "__main__":
    raise SystemExit(main())
