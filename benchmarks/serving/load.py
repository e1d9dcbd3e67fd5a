"""Latency and throughput of ``st-leap serve`` under 1, 8 and 32 concurrent clients, one text per request.

Each model (``--models NAME=SPEC``: a torch model, or an export made on demand with ``int8:SOURCE``, e.g. the
original whole-graph int8 export and a query encoder's int8 export) is served alone by a real ``st-leap serve``
subprocess on 127.0.0.1 (a free port, ``--threads`` for the server; started, waited for on ``/health``, stopped at
the end; never two servers at once). Each task's test queries are sent as a search front end sends them: one query
per request, in the query role (``input_type: "query"``). Each client is a thread with one persistent HTTP
connection (``http.client``) that sends ``--requests`` requests one after another, or stops at the cell's time cap
(``--max-seconds``); the clients of a cell start together. Per cell: latency p50 / p99 of the answered requests,
throughput (answered requests per second of the cell), 503s (the queue full: counted apart) and errors (anything
else: must be zero), and the server's mean texts per encode call (from its ``/metrics``).

With ``--rounds`` above 1 each round serves every model again in turn; cells report the median over rounds, and
each model's throughput and p50 against the first model's in the same round (median of per-round ratios). The
clients run on the same machine as the server and share its cores.

    HF_HUB_OFFLINE=1 python -m benchmarks.serving.load
    HF_HUB_OFFLINE=1 python -m benchmarks.serving.load --models minilm=minilm minilm-int8=int8:minilm \\
        qe-int8=int8:st_leap_demo/query_encoder --threads 2

Writes ``benchmarks/results/serving/load.{json,md}``; exits 1 when a request failed.
"""

from __future__ import annotations

import argparse
import http.client
import threading
import time
from typing import Any

import numpy as np

from benchmarks._common import command_line, meta_info, results_dir, write_result
from benchmarks.serving._server import (
    DEFAULT_MODELS,
    DEFAULT_TASKS,
    DEFAULT_WORK_DIR,
    SPEC_HELP,
    Client,
    ServerProcess,
    batch_totals,
    prepare_model,
    query_body,
    split_list,
    task_label,
    task_queries,
)

MAX_ERRORS_KEPT = 10  # error messages kept per cell


def client_loop(
    port: int,
    name: str,
    texts: list[str],
    offset: int,
    requests: int,
    dimension: int,
    start: threading.Barrier,
    deadline: list[float],
    out: dict[str, Any],
) -> None:
    """One client: its own connection, ``requests`` requests of one text each, until the cell's deadline."""
    latencies, errors, busy, capped = [], [], 0, False
    with Client(port) as client:
        try:
            client.request("GET", "/health")  # open the connection before the start
        except (OSError, http.client.HTTPException) as error:
            errors.append(f"opening the connection: {type(error).__name__}: {error}")
        start.wait()
        for k in range(requests):
            if time.monotonic() > deadline[0]:
                capped = True
                break
            text = texts[(offset + k) % len(texts)]
            began = time.perf_counter()
            try:
                reply = client.post_json("/v1/embeddings", query_body(name, text))
            except (OSError, http.client.HTTPException) as error:
                errors.append(f"{type(error).__name__}: {error}")
                continue
            took = time.perf_counter() - began
            if reply.status == 200:
                data = reply.json().get("data") or [{}]
                if len(data) != 1 or len(data[0].get("embedding") or ()) != dimension:
                    errors.append(f"HTTP 200 with {len(data)} embedding(s) of the wrong shape")
                    continue
                latencies.append(took)
            elif reply.status == 503:
                busy += 1
                time.sleep(0.05)
            else:
                errors.append(f"HTTP {reply.status}: {reply.body[:200].decode(errors='replace')}")
    out.update(latencies=latencies, errors=errors, busy=busy, capped=capped)


def run_cell(
    server: ServerProcess, name: str, texts: list[str], clients: int, requests: int, max_seconds: float, dimension: int
) -> dict[str, Any]:
    """``clients`` clients at once, ``requests`` each, within ``max_seconds``."""
    start = threading.Barrier(clients + 1, timeout=120)
    deadline = [float("inf")]
    outs: list[dict[str, Any]] = [{} for _ in range(clients)]
    stride = max(1, len(texts) // clients)
    threads = [
        threading.Thread(
            target=client_loop,
            args=(server.port, name, texts, i * stride, requests, dimension, start, deadline, outs[i]),
            daemon=True,
        )
        for i in range(clients)
    ]
    texts_before, calls_before = batch_totals(server.port)
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    deadline[0] = time.monotonic() + max_seconds
    for thread in threads:
        thread.join(max_seconds + 120)
    wall = time.perf_counter() - began
    texts_after, calls_after = batch_totals(server.port)
    latencies = np.array([t for out in outs for t in out.get("latencies", [])], dtype=float)
    errors = [e for out in outs for e in out.get("errors", ["the client did not finish"])]
    ok = int(latencies.size)
    return {
        "clients": clients,
        "requests_per_client": requests,
        "sent": ok + len(errors) + sum(o.get("busy", 0) for o in outs),
        "ok": ok,
        "status_503": sum(o.get("busy", 0) for o in outs),
        "errors": len(errors),
        "error_messages": errors[:MAX_ERRORS_KEPT],
        "capped": any(o.get("capped") for o in outs),
        "wall_s": wall,
        "throughput_rps": ok / wall if wall > 0 else None,
        "p50_ms": float(np.percentile(latencies, 50) * 1e3) if ok else None,
        "p99_ms": float(np.percentile(latencies, 99) * 1e3) if ok else None,
        "mean_ms": float(latencies.mean() * 1e3) if ok else None,
        "mean_batch_texts": (
            (texts_after - texts_before) / (calls_after - calls_before) if calls_after > calls_before else None
        ),
    }


def summarise(cells: list[dict[str, Any]], first_model: str) -> list[dict[str, Any]]:
    """One row per (model, task, clients): medians over rounds, and ratios to the first model in the same round."""
    keys = list(dict.fromkeys((c["model"], c["task"], c["clients"]) for c in cells))
    by = {(c["model"], c["task"], c["clients"], c["round"]): c for c in cells}
    rows = []
    for model, task, clients in keys:
        runs = [c for c in cells if (c["model"], c["task"], c["clients"]) == (model, task, clients)]

        def median(key: str, runs: list[dict[str, Any]] = runs) -> float | None:
            values = [r[key] for r in runs if r[key] is not None]
            return float(np.median(values)) if values else None

        ratios: dict[str, list[float]] = {"throughput": [], "p50": []}
        for run in runs:
            base = by.get((first_model, task, clients, run["round"]))
            if base and base["throughput_rps"] and run["throughput_rps"] and base["p50_ms"] and run["p50_ms"]:
                ratios["throughput"].append(run["throughput_rps"] / base["throughput_rps"])
                ratios["p50"].append(run["p50_ms"] / base["p50_ms"])
        rows.append(
            {
                "model": model,
                "task": task,
                "clients": clients,
                "rounds": len(runs),
                "ok": sum(r["ok"] for r in runs),
                "status_503": sum(r["status_503"] for r in runs),
                "errors": sum(r["errors"] for r in runs),
                "capped": any(r["capped"] for r in runs),
                **{key: median(key) for key in ("p50_ms", "p99_ms", "throughput_rps", "mean_batch_texts")},
                "throughput_vs_first": float(np.median(ratios["throughput"])) if ratios["throughput"] else None,
                "p50_vs_first": float(np.median(ratios["p50"])) if ratios["p50"] else None,
            }
        )
    return rows


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else f"{value:{spec}}"


def markdown(result: dict[str, Any]) -> str:
    info = result["run_info"]
    lines = [
        "# st-leap serve under concurrent clients",
        "",
        f"Command: `{result['meta_info']['command']}`",
        "",
        f"One `st-leap serve` subprocess at a time on 127.0.0.1 (`--threads {info['threads']}`, default batching: "
        f"up to {info['max_batch_size']} texts, {info['max_wait_ms']} ms wait). Each client: a thread with one "
        f"persistent connection, {info['requests']} requests of one test query each (query role), capped at "
        f"{info['max_seconds']:.0f} s per cell. {info['rounds']} round(s); cells are medians over rounds. The clients "
        "share the server's cores. Errors must be 0; 503s (queue full) are counted apart.",
        "",
        "| model | task | clients | answered | 503 | errors | p50 ms | p99 ms | requests/s | texts per encode call "
        "| throughput vs first model | p50 vs first model |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["summary"]:
        lines.append(
            f"| {row['model']} | {row['task']} | {row['clients']} | {row['ok']}{' (capped)' if row['capped'] else ''} "
            f"| {row['status_503']} | {row['errors']} | {_fmt(row['p50_ms'])} | {_fmt(row['p99_ms'])} | "
            f"{_fmt(row['throughput_rps'])} | {_fmt(row['mean_batch_texts'])} | "
            f"{_fmt(row['throughput_vs_first'], '.2f')}x | {_fmt(row['p50_vs_first'], '.2f')}x |"
        )
    lines += [
        "",
        "| model | served folder | lean roles | start to healthy (s, first round) |",
        "| --- | --- | --- | ---: |",
    ]
    for name, served in result["servers"].items():
        lines.append(
            f"| {name} | `{served['path']}` | {', '.join(served['lean_roles']) or '-'} | {served['start_s']:.1f} |"
        )
    if result["errors"]:
        lines += ["", f"**{result['errors']} request(s) failed**: " + "; ".join(result["error_messages"][:5])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        help=SPEC_HELP,
    )
    parser.add_argument(
        "--tasks", default=DEFAULT_TASKS, help="scifact, nfcorpus or BEIR folders (default: %(default)s)"
    )
    parser.add_argument("--concurrency", default="1,8,32", help="clients per cell (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=50, help="requests per client (default: %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="time cap of a cell (default: %(default)s)")
    parser.add_argument(
        "--warmup", type=int, default=16, help="requests sent before a server's cells (default: %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="times every model is served (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="the server's --threads (default: %(default)s)")
    parser.add_argument(
        "--max-batch-size", type=int, default=32, help="the server's --max-batch-size (default: %(default)s)"
    )
    parser.add_argument(
        "--max-wait-ms", type=float, default=0.0, help="the server's --max-wait-ms (default: %(default)s)"
    )
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for /health")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="exports and server logs (default: %(default)s)")
    parser.add_argument("--out", default=str(results_dir("serving") / "load"))
    args = parser.parse_args(argv)
    concurrency = [int(c) for c in split_list(args.concurrency)]
    if min(concurrency, default=0) < 1 or args.requests < 1 or args.rounds < 1 or args.max_seconds <= 0:
        parser.error("--concurrency values, --requests and --rounds must be >= 1, --max-seconds > 0")
    tasks = split_list(args.tasks)
    texts = {task_label(task): task_queries(task) for task in tasks}
    models = [prepare_model(spec, args.work_dir) for spec in args.models]
    cells: list[dict[str, Any]] = []
    servers: dict[str, Any] = {}
    for round_index in range(args.rounds):
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
                start_s = time.perf_counter() - started
                health = server.health()
                servers.setdefault(
                    served.name,
                    {
                        "path": served.path,
                        "spec": served.spec,
                        "start_s": start_s,
                        "lean_roles": health.get("lean_roles", []),
                        "routes": health.get("routes"),
                    },
                )
                dimension = int(health["embedding_dimension"])
                with Client(server.port) as client:
                    warm = [t for task_texts in texts.values() for t in task_texts[: args.warmup]]
                    for text in warm[: max(args.warmup, 1)]:
                        client.post_json("/v1/embeddings", query_body(served.name, text))
                for task, task_texts in texts.items():
                    for clients in concurrency:
                        cell = run_cell(
                            server, served.name, task_texts, clients, args.requests, args.max_seconds, dimension
                        )
                        cell.update(model=served.name, task=task, round=round_index)
                        cells.append(cell)
                        print(
                            f"round {round_index} {served.name} {task} x{clients}: {cell['ok']} ok, "
                            f"{cell['errors']} errors, {cell['status_503']} 503, p50 {_fmt(cell['p50_ms'])} ms, "
                            f"{_fmt(cell['throughput_rps'])} req/s",
                            flush=True,
                        )
    errors = sum(c["errors"] for c in cells)
    result: dict[str, Any] = {
        "run_info": {
            "models": args.models,
            "tasks": list(texts),
            "concurrency": concurrency,
            "requests": args.requests,
            "max_seconds": args.max_seconds,
            "rounds": args.rounds,
            "threads": args.threads,
            "max_batch_size": args.max_batch_size,
            "max_wait_ms": args.max_wait_ms,
            "host": "127.0.0.1",
            "queries": {task: len(t) for task, t in texts.items()},
        },
        "servers": servers,
        "summary": summarise(cells, models[0].name),
        "cells": cells,
        "errors": errors,
        "error_messages": [m for c in cells for m in c["error_messages"]][:MAX_ERRORS_KEPT],
        "meta_info": meta_info(command_line("benchmarks.serving.load", argv)),
    }
    text = markdown(result)
    write_result(args.out, result, text)
    print(text)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
