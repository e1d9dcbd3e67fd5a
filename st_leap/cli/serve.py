"""``st-leap serve``: an OpenAI-compatible embedding server (:mod:`st_leap.serving`) for any model st_leap saves or
exports, with batching, a bounded queue, Prometheus metrics and, when the model holds a calibrated reference, an
:class:`~st_leap.monitoring.ExitMonitor` on the live traffic."""

from __future__ import annotations

import argparse
import math

from st_leap.cli.common import add_model_argument, fallback_setting, fraction, positive_int

DESCRIPTION = """Serve a model's embeddings over HTTP (needs: pip install "st-leap[serve]").

POST /v1/embeddings takes OpenAI's request, {"input": "a text" or ["texts", ...], "model": NAME,
"encoding_format": "float" or "base64"}, and answers OpenAI's response. The role of the texts is chosen by the field
"input_type" ("query" or "document"; OpenAI clients send it with extra_body) or by the model name: NAME is plain
encode, NAME:query encode_query, NAME:document encode_document. A query encoder for a kept index (st-leap
fit-query-encoder) runs its shallow encoder for queries and the index model, exactly, for documents. GET /v1/models
lists the names, GET /health the model, the queue and the monitor, GET /metrics the Prometheus metrics.

One worker encodes: concurrent requests of the same role are encoded together, up to --max-batch-size texts, after
waiting at most --max-wait-ms for more. Requests wait in a queue of at most --max-queue texts; one that would pass it
is answered 503 with Retry-After. A request holds at most --max-texts texts of at most --max-chars characters.

When the model folder holds a monitoring reference (st-leap calibrate --save-model wrote st_leap_monitor/), the
roles it covers are served through an ExitMonitor fed by the live requests: a drifting role falls back to full depth
on the requests that follow, and its metrics are in /metrics. An exported graph cannot exit and is served without one.

example: st-leap serve my-qe --port 8080
         curl -s localhost:8080/v1/embeddings -H 'content-type: application/json' \\
              -d '{"model": "my-qe", "input": ["what lowers blood pressure?"], "input_type": "query"}'"""


def _milliseconds(text: str) -> float:
    """``--max-wait-ms``: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of milliseconds >= 0, got {text!r}")
    return value


def _port(text: str) -> int:
    """``--port``: a whole number in [0, 65535]."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in [0, 65535], got {text!r}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve",
        help="Serve embeddings over HTTP (OpenAI-compatible /v1/embeddings, query/document roles, metrics).",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="Address to bind (default: %(default)s, this machine only)"
    )
    parser.add_argument("--port", type=_port, default=8080, help="Port (default: %(default)s)")
    parser.add_argument("--name", default=None, help="Served model name (default: the Hub id or the folder name)")
    parser.add_argument(
        "--max-batch-size", type=positive_int, default=32, help="Most texts encoded in one call (default: %(default)s)"
    )
    parser.add_argument(
        "--max-wait-ms",
        type=_milliseconds,
        default=0.0,
        help="Longest wait for more requests to batch when none are queued (default: %(default)s: batch what queued "
        "while the last batch was encoding, never hold a lone request)",
    )
    parser.add_argument(
        "--max-queue", type=positive_int, default=1024, help="Most texts waiting to be encoded (default: %(default)s)"
    )
    parser.add_argument(
        "--max-texts", type=positive_int, default=256, help="Most texts a request (default: %(default)s)"
    )
    parser.add_argument(
        "--max-chars", type=positive_int, default=8192, help="Most characters a text (default: %(default)s)"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="CPU threads of the encoder (default: torch's)"
    )
    monitor = parser.add_argument_group("monitoring (a model with a calibrated reference)")
    monitor.add_argument(
        "--reference", default=None, help="Folder holding st_leap_monitor/ (default: the model folder, if it has one)"
    )
    monitor.add_argument("--no-monitor", action="store_true", help="Serve without a monitor even with a reference")
    monitor.add_argument("--window", type=positive_int, default=1000, help="Texts per window (default: %(default)s)")
    monitor.add_argument(
        "--sample-rate", type=fraction, default=0.01, help="Share of texts re-encoded at full depth (default: 0.01)"
    )
    monitor.add_argument(
        "--fallback", type=fallback_setting, default="full", help="full, none (alert only) or a theta (default: full)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    if args.max_texts > args.max_queue:
        raise ValueError(f"--max-texts ({args.max_texts}) must be at most --max-queue ({args.max_queue})")
    if args.reference and args.no_monitor:
        raise ValueError("--reference and --no-monitor contradict each other: give one")
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise ValueError(
            f'st-leap serve needs FastAPI, uvicorn and prometheus_client: pip install "st-leap[serve]" ({error})'
        ) from None

    from pathlib import Path

    import torch

    from st_leap import from_pretrained, resources, serving
    from st_leap.cli.common import hub_id_of

    if args.threads:
        torch.set_num_threads(args.threads)  # before loading: an exported graph's runtime takes it at load time
    model_path = resources.resolve_model(args.model)
    hub_id = hub_id_of(model_path)
    model = from_pretrained(model_path, base_model=hub_id)
    name = args.name or hub_id or (Path(model_path).name if Path(model_path).exists() else model_path)
    if args.no_monitor:
        reference = None
    elif args.reference:
        reference = args.reference  # given: a folder without a reference is an error
    else:
        reference = serving.find_reference(model_path) if Path(model_path).is_dir() else None
    server = serving.EmbeddingServer(
        model,
        name=name,
        reference=reference,
        monitor=not args.no_monitor,
        monitor_options={"window": args.window, "sample_rate": args.sample_rate, "fallback": args.fallback},
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        threads=args.threads,
    )
    print(
        f"serving {model_path} as {', '.join(server.names)} on http://{args.host}:{args.port}/v1/embeddings",
        flush=True,
    )
    for role, words in (server.routes or {}).items():
        print(f"  {role}: {words}", flush=True)
    if server.monitor is not None:
        print(f"  monitored roles: {', '.join(server.monitored_roles)} (fallback: {args.fallback})", flush=True)
    else:
        print(f"  no monitor: {server.monitor_reason}", flush=True)
    serving.serve(server, host=args.host, port=args.port)
    return 0
