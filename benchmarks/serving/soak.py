"""One ``st-leap serve`` process under steady load for minutes: its resident memory, requests and errors over time.

A real ``st-leap serve`` subprocess on 127.0.0.1 serves the model (``--model NAME=SPEC``); ``--clients`` client
threads, each with one persistent connection, send requests back to back for ``--minutes``, taking the roles of
``--roles`` in turn: a query request holds one test query of the tasks, a document request ``--document-batch``
documents of their corpora (cut at ``--document-chars`` characters), so the server sees fresh shapes all along.
Every ``--interval`` seconds the server process's resident memory (``VmRSS`` of ``/proc/PID/status``) is recorded
with the requests answered, the 503s and the errors so far. Reported: RSS first (after the warm-up), last and
largest, its least-squares slope in MiB per minute (over the whole run and over its second half), the errors
(must be zero) and a plot of RSS over time.

    HF_HUB_OFFLINE=1 python -m benchmarks.serving.soak
    HF_HUB_OFFLINE=1 python -m benchmarks.serving.soak --model minilm-int8=int8:minilm --minutes 30 \\
        --out benchmarks/results/serving/soak_int8

Writes ``benchmarks/results/serving/soak.{json,md,png}``; exits 1 when a request failed.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import command_line, meta_info, results_dir, write_plot, write_result
from benchmarks.serving._server import (
    DEFAULT_TASKS,
    DEFAULT_WORK_DIR,
    SPEC_HELP,
    Client,
    ServerProcess,
    prepare_model,
    query_body,
    read_task,
    slope_per_minute,
    split_list,
    task_label,
)

ROLES = ("query", "document")
MAX_ERRORS_KEPT = 10


class Counters:
    """Requests answered, refused (503) and failed, shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = self.busy = self.errors = self.texts = 0
        self.messages: list[str] = []

    def add(self, ok: int = 0, busy: int = 0, texts: int = 0, error: str | None = None) -> None:
        with self.lock:
            self.ok += ok
            self.busy += busy
            self.texts += texts
            if error is not None:
                self.errors += 1
                if len(self.messages) < MAX_ERRORS_KEPT:
                    self.messages.append(error)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {"requests_ok": self.ok, "status_503": self.busy, "errors": self.errors, "texts": self.texts}


def client_loop(port: int, name: str, bodies: itertools.cycle, stop: threading.Event, counters: Counters) -> None:
    """Send the bodies back to back on one connection until ``stop``."""
    with Client(port) as client:
        while not stop.is_set():
            body = next(bodies)
            try:
                reply = client.post_json("/v1/embeddings", body)
            except (OSError, http.client.HTTPException) as error:
                counters.add(error=f"{type(error).__name__}: {error}")
                time.sleep(0.05)
                continue
            if reply.status == 200:
                texts = 1 if isinstance(body["input"], str) else len(body["input"])
                if len(reply.json().get("data") or ()) != texts:
                    counters.add(error=f"HTTP 200 with the wrong number of embeddings for {texts} text(s)")
                else:
                    counters.add(ok=1, texts=texts)
            elif reply.status == 503:
                counters.add(busy=1)
                time.sleep(0.05)
            else:
                counters.add(error=f"HTTP {reply.status}: {reply.body[:200].decode(errors='replace')}")


def load_texts(tasks: list[str], document_chars: int) -> tuple[list[str], list[str]]:
    """The tasks' test queries and their corpora's documents (cut at ``document_chars`` characters)."""
    queries, documents = [], []
    for task in tasks:
        data = read_task(task)
        queries += list(data.queries.values())
        documents += [text[:document_chars] for text in data.corpus.values() if text.strip()]
    return queries, documents


def request_bodies(
    name: str, queries: list[str], documents: list[str], roles: list[str], document_batch: int, offset: int
) -> itertools.cycle:
    """The requests one client sends, round and round: the roles in turn, each client from its own place in the
    queries and documents."""
    bodies = []
    count = max(len(queries), len(documents) // document_batch, 1)
    for i in range(count):
        role = roles[(i + offset) % len(roles)]
        j = i + offset * 7919  # the clients start at different texts
        if role == "query":
            bodies.append(query_body(name, queries[j % len(queries)], "query"))
        else:
            bodies.append(
                query_body(
                    name,
                    [documents[(j * document_batch + k) % len(documents)] for k in range(document_batch)],
                    "document",
                )
            )
    return itertools.cycle(bodies)


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """RSS first / last / largest, its slope (MiB per minute; whole run and second half), growth, and the
    throughput of each interval."""
    times = [s["t_s"] for s in samples]
    rss = [s["rss_mib"] for s in samples]
    half = [s for s in samples if s["t_s"] >= times[-1] / 2]
    rates = [
        (b["requests_ok"] - a["requests_ok"]) / (b["t_s"] - a["t_s"])
        for a, b in zip(samples, samples[1:])
        if b["t_s"] > a["t_s"]
    ]
    return {
        "rss_first_mib": rss[0],
        "rss_last_mib": rss[-1],
        "rss_max_mib": max(rss),
        "rss_growth": (rss[-1] - rss[0]) / rss[0] if rss[0] else None,
        "rss_slope_mib_per_min": slope_per_minute(times, rss),
        "rss_slope_second_half_mib_per_min": slope_per_minute([s["t_s"] for s in half], [s["rss_mib"] for s in half]),
        "requests_ok": samples[-1]["requests_ok"],
        "texts": samples[-1]["texts"],
        "status_503": samples[-1]["status_503"],
        "errors": samples[-1]["errors"],
        "requests_per_s": {"min": min(rates), "median": float(np.median(rates)), "max": max(rates)} if rates else None,
    }


def plot(result: dict[str, Any], path: str | Path) -> Path:
    from st_leap.reporting import pyplot, save_figure

    plt = pyplot()
    samples = result["samples"]
    minutes = [s["t_s"] / 60 for s in samples]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(minutes, [s["rss_mib"] for s in samples], marker=".", label="server RSS")
    ax.set_xlabel("minutes under load")
    ax.set_ylabel("server resident memory (MiB)")
    rates = [
        (b["requests_ok"] - a["requests_ok"]) / (b["t_s"] - a["t_s"])
        for a, b in zip(samples, samples[1:])
        if b["t_s"] > a["t_s"]
    ]
    if rates:
        other = ax.twinx()
        other.plot(minutes[1:], rates, color="tab:gray", linestyle="--", label="requests/s")
        other.set_ylabel("requests answered per second (dashed)")
    summary = result["summary"]
    slope = summary["rss_slope_mib_per_min"]
    ax.set_title(
        f"st-leap serve {result['run_info']['model']}: {summary['requests_ok']} requests, "
        f"{summary['errors']} errors, RSS slope {'-' if slope is None else f'{slope:+.2f}'} MiB/min",
        fontsize=9,
    )
    fig.tight_layout()
    return save_figure(fig, path)


def markdown(result: dict[str, Any]) -> str:
    info, summary = result["run_info"], result["summary"]

    def mib(value: float | None, spec: str = ".1f") -> str:
        return "-" if value is None else f"{value:{spec}}"

    rates = summary["requests_per_s"] or {}
    lines = [
        "# st-leap serve under steady load",
        "",
        f"Command: `{result['meta_info']['command']}`",
        "",
        f"`{info['model']}` (`{info['path']}`) served by one `st-leap serve` process on 127.0.0.1 (`--threads "
        f"{info['threads']}`) for {info['minutes']:g} minutes; {info['clients']} clients, one persistent connection "
        f"each, back to back, roles in turn: {', '.join(info['roles'])} (a query: one test query; documents: "
        f"{info['document_batch']} per request, at most {info['document_chars']} characters). RSS of the server "
        f"process every {info['interval_s']:g} s.",
        "",
        "| RSS first (MiB) | last | largest | growth | slope (MiB/min) | slope, second half | requests | texts | "
        "503 | errors | requests/s per interval (min / median / max) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| {mib(summary['rss_first_mib'])} | {mib(summary['rss_last_mib'])} | {mib(summary['rss_max_mib'])} | "
        f"{mib(None if summary['rss_growth'] is None else summary['rss_growth'] * 100, '+.1f')}% | "
        f"{mib(summary['rss_slope_mib_per_min'], '+.2f')} | "
        f"{mib(summary['rss_slope_second_half_mib_per_min'], '+.2f')} | {summary['requests_ok']} | "
        f"{summary['texts']} | {summary['status_503']} | {summary['errors']} | "
        f"{mib(rates.get('min'))} / {mib(rates.get('median'))} / {mib(rates.get('max'))} |",
        "",
        "| minute | RSS (MiB) | requests | 503 | errors |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {s['t_s'] / 60:.2f} | {s['rss_mib']:.1f} | {s['requests_ok']} | {s['status_503']} | {s['errors']} |"
        for s in result["samples"]
    ]
    if result.get("plot"):
        lines += ["", f"![RSS over time]({Path(result['plot']).name})"]
    if summary["errors"] or result.get("server_died"):
        lines += [
            "",
            f"**Failures**: {summary['errors']} error(s); "
            + "; ".join(result["error_messages"][:5])
            + (" The server process died." if result.get("server_died") else ""),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="minilm=minilm",
        help=SPEC_HELP,
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes under load (default: %(default)s)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (default: %(default)s)")
    parser.add_argument(
        "--roles", default=",".join(ROLES), help="roles the requests take in turn (default: %(default)s)"
    )
    parser.add_argument(
        "--document-batch", type=int, default=8, help="documents per document request (default: %(default)s)"
    )
    parser.add_argument("--document-chars", type=int, default=2000, help="documents cut at (default: %(default)s)")
    parser.add_argument(
        "--tasks", default=DEFAULT_TASKS, help="scifact, nfcorpus or BEIR folders (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=2, help="the server's --threads (default: %(default)s)")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for /health")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="exports and server logs (default: %(default)s)")
    parser.add_argument("--out", default=str(results_dir("serving") / "soak"))
    args = parser.parse_args(argv)
    roles = split_list(args.roles)
    if not roles or set(roles) - set(ROLES):
        parser.error(f"--roles takes {', '.join(ROLES)}, got {args.roles!r}")
    if args.minutes <= 0 or args.interval <= 0 or args.clients < 1 or args.document_batch < 1:
        parser.error("--minutes and --interval must be > 0, --clients and --document-batch >= 1")
    tasks = split_list(args.tasks)
    served = prepare_model(args.model, args.work_dir)
    queries, documents = load_texts(tasks, args.document_chars)
    bodies = [
        request_bodies(served.name, queries, documents, roles, args.document_batch, i) for i in range(args.clients)
    ]
    counters, stop = Counters(), threading.Event()
    samples: list[dict[str, Any]] = []
    server_died = False
    server = ServerProcess(
        served.path,
        served.name,
        threads=args.threads,
        log_dir=f"{args.work_dir}/logs",
        start_timeout=args.start_timeout,
    )
    with server:
        with Client(server.port) as client:  # warm-up: every role twice
            for body in itertools.islice(
                request_bodies(served.name, queries, documents, roles, args.document_batch, args.clients),
                2 * len(roles),
            ):
                client.post_json("/v1/embeddings", body)
        threads = [
            threading.Thread(
                target=client_loop, args=(server.port, served.name, bodies[i], stop, counters), daemon=True
            )
            for i in range(args.clients)
        ]
        began = time.monotonic()
        samples.append({"t_s": 0.0, "rss_mib": server.rss_mib(), **counters.snapshot()})
        for thread in threads:
            thread.start()
        end = began + args.minutes * 60
        try:
            while True:
                now = time.monotonic()
                if now >= end:
                    break
                time.sleep(min(args.interval, end - now))
                if server.process.poll() is not None:
                    server_died = True
                    break
                samples.append({"t_s": time.monotonic() - began, "rss_mib": server.rss_mib(), **counters.snapshot()})
                last = samples[-1]
                print(
                    f"{last['t_s'] / 60:.2f} min: RSS {last['rss_mib']:.1f} MiB, {last['requests_ok']} requests, "
                    f"{last['errors']} errors",
                    flush=True,
                )
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        if not server_died and samples[-1]["t_s"] < time.monotonic() - began - 1:
            samples.append({"t_s": time.monotonic() - began, "rss_mib": server.rss_mib(), **counters.snapshot()})
    result: dict[str, Any] = {
        "run_info": {
            "model": served.name,
            "spec": served.spec,
            "path": served.path,
            "minutes": args.minutes,
            "interval_s": args.interval,
            "clients": args.clients,
            "roles": roles,
            "document_batch": args.document_batch,
            "document_chars": args.document_chars,
            "tasks": [task_label(t) for t in tasks],
            "threads": args.threads,
            "host": "127.0.0.1",
        },
        "samples": samples,
        "summary": summarise(samples),
        "server_died": server_died,
        "error_messages": counters.messages,
        "meta_info": meta_info(command_line("benchmarks.serving.soak", argv)),
    }
    image = write_plot(plot, result, args.out)
    result["plot"] = str(image) if image else None
    text = markdown(result)
    write_result(args.out, result, text)
    print(text)
    return 1 if result["summary"]["errors"] or server_died else 0


if __name__ == "__main__":
    raise SystemExit(main())
