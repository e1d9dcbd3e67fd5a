"""``kill -9`` of ``st-leap serve`` under load, and a restart on the same folder: the same embeddings, and how long the
outage lasts.

A real ``st-leap serve`` subprocess on 127.0.0.1 serves the model (``--model NAME=SPEC``). A fixed probe set (the
first ``--probes`` test queries of the first task, in one request per role, base64 so the float32 bits come back
as they are) is encoded; ``--clients`` client threads then send one query per request back to back, each on its own
connection, never retrying. After ``--kill-after`` seconds the server process gets SIGKILL and is started again at
once on the same folder and port; the clients keep sending through the outage (a failed request is counted and the
client tries again 20 ms later) and for ``--after`` seconds after the new server is healthy. Then the probes are
encoded again. Reported: the time from the restart to a healthy ``/health`` and from the kill to it; the requests
that failed during the outage (expected), by kind, and any that failed outside it (must be none); the largest
absolute difference between the probes' embeddings before the kill and after the restart, per role (should be 0).

    HF_HUB_OFFLINE=1 python -m benchmarks.serving.restart
    HF_HUB_OFFLINE=1 python -m benchmarks.serving.restart --model minilm=minilm --clients 8

Writes ``benchmarks/results/serving/restart.{json,md}``; exits 1 when the embeddings differ or a request failed
outside the outage.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import threading
import time
from collections import Counter
from typing import Any

import numpy as np

from benchmarks._common import command_line, meta_info, results_dir, write_result
from benchmarks.serving._server import (
    DEFAULT_WORK_DIR,
    SPEC_HELP,
    Client,
    ServerProcess,
    prepare_model,
    query_body,
    split_list,
    task_label,
    task_queries,
)

MAX_DIFF = 1e-6  # the restarted server must answer the same embeddings
ROLES = ("query", "document")


def probe(port: int, name: str, texts: list[str], roles: list[str]) -> dict[str, np.ndarray]:
    """The probes' embeddings per role, one request each, float32 as sent (base64)."""
    out = {}
    with Client(port) as client:
        for role in roles:
            reply = client.post_json("/v1/embeddings", query_body(name, texts, role, encoding_format="base64"))
            if reply.status != 200:
                raise RuntimeError(f"the probe request for {role} got HTTP {reply.status}: {reply.body[:300]!r}")
            out[role] = np.stack(
                [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in reply.json()["data"]]
            )
    return out


def client_loop(
    port: int,
    name: str,
    texts: list[str],
    offset: int,
    stop: threading.Event,
    attempts: list[tuple[float, float, str]],
) -> None:
    """Send one query per request until ``stop``; every attempt as ``(start, end, outcome)`` (monotonic times)."""
    client = Client(port, timeout=30)
    i = offset
    while not stop.is_set():
        began = time.monotonic()
        try:
            reply = client.post_json("/v1/embeddings", query_body(name, texts[i % len(texts)]), retry_stale=False)
            outcome = "ok" if reply.status == 200 else f"HTTP {reply.status}"
        except (OSError, http.client.HTTPException) as error:
            outcome = type(error).__name__
        attempts.append((began, time.monotonic(), outcome))
        i += 1
        if outcome != "ok":
            time.sleep(0.02)
    client.close()


def classify(attempts: list[tuple[float, float, str]], kill: float, healthy: float) -> dict[str, Any]:
    """Requests before the kill, during the outage (ended after the kill and started before the server was healthy
    again) and after it; failures by kind in each."""
    phases: dict[str, Counter[str]] = {"before": Counter(), "outage": Counter(), "after": Counter()}
    for began, ended, outcome in attempts:
        phase = "before" if ended < kill else "outage" if began <= healthy else "after"
        phases[phase][outcome] += 1
    return {
        phase: {
            "ok": counts.get("ok", 0),
            "failed": sum(n for k, n in counts.items() if k != "ok"),
            "failures": {k: n for k, n in sorted(counts.items()) if k != "ok"},
        }
        for phase, counts in phases.items()
    }


def markdown(result: dict[str, Any]) -> str:
    info, res = result["run_info"], result["results"]
    phases = res["requests"]
    lines = [
        "# st-leap serve: kill -9 under load, restart on the same folder",
        "",
        f"Command: `{result['meta_info']['command']}`",
        "",
        f"`{info['model']}` (`{info['path']}`) on 127.0.0.1 (`--threads {info['threads']}`); {info['clients']} "
        f"clients sending one query per request; SIGKILL after {info['kill_after_s']:g} s of load, restart at once on "
        f"the same folder and port, {info['after_s']:g} s more load once healthy. Probes: {info['probes']} test "
        f"queries of {info['probe_task']}, one request per role, float32 as sent (base64).",
        "",
        f"**{'PASS' if result['passed'] else 'FAIL'}**: restart to healthy {res['restart_to_healthy_s']:.1f} s "
        f"(kill to healthy {res['outage_s']:.1f} s); {phases['outage']['failed']} requests failed during the outage "
        f"(expected), {phases['before']['failed'] + phases['after']['failed']} outside it; probes equal after the "
        f"restart: {'yes' if res['probes_equal'] else 'NO'}.",
        "",
        "| phase | answered | failed | failures |",
        "| --- | ---: | ---: | --- |",
    ]
    for phase in ("before", "outage", "after"):
        row = phases[phase]
        kinds = ", ".join(f"{n}x {k}" for k, n in row["failures"].items()) or "-"
        lines.append(f"| {phase} | {row['ok']} | {row['failed']} | {kinds} |")
    lines += [
        "",
        "*outage*: the requests that ended after the kill and began before the restarted server's `/health` "
        "was seen answering (polled every 50 ms: a few of them are answered by the new server).",
    ]
    lines += [
        "",
        "| role | max abs diff of the probes' embeddings (before the kill vs after the restart) | bit-equal |",
        "| --- | ---: | --- |",
    ]
    lines += [
        f"| {role} | {diff['max_abs_diff']:.2e} | {'yes' if diff['bit_equal'] else 'no'} |"
        for role, diff in res["probes"].items()
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="minilm-int8=int8:minilm",
        help=SPEC_HELP,
    )
    parser.add_argument("--clients", type=int, default=3, help="client threads (default: %(default)s)")
    parser.add_argument(
        "--kill-after", type=float, default=10.0, help="seconds of load before the kill (default: %(default)s)"
    )
    parser.add_argument(
        "--after", type=float, default=10.0, help="seconds of load after the restart (default: %(default)s)"
    )
    parser.add_argument("--probes", type=int, default=16, help="probe texts (default: %(default)s)")
    parser.add_argument(
        "--tasks", default="scifact", help="queries: scifact, nfcorpus or BEIR folders (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=2, help="the server's --threads (default: %(default)s)")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for /health")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="exports and server logs (default: %(default)s)")
    parser.add_argument("--out", default=str(results_dir("serving") / "restart"))
    args = parser.parse_args(argv)
    if args.clients < 1 or args.probes < 1 or args.kill_after <= 0 or args.after <= 0:
        parser.error("--clients and --probes must be >= 1, --kill-after and --after > 0")
    tasks = split_list(args.tasks)
    texts = [t for task in tasks for t in task_queries(task)]
    probes = task_queries(tasks[0], seed=None)[: args.probes]
    served = prepare_model(args.model, args.work_dir)
    server = ServerProcess(
        served.path,
        served.name,
        threads=args.threads,
        log_dir=f"{args.work_dir}/logs",
        start_timeout=args.start_timeout,
    )
    attempts: list[tuple[float, float, str]] = []
    stop = threading.Event()
    with server:
        roles = [role for role in ROLES if role in server.health()["roles"]]
        before = probe(server.port, served.name, probes, roles)
        threads = [
            threading.Thread(
                target=client_loop, args=(server.port, served.name, texts, i * 101, stop, attempts), daemon=True
            )
            for i in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        try:
            time.sleep(args.kill_after)
            first_pid = server.pid
            killed = time.monotonic()
            server.kill()
            restart_to_healthy = server.start()  # the same folder, port and arguments
            healthy = time.monotonic()
            print(
                f"killed pid {first_pid}; pid {server.pid} healthy {restart_to_healthy:.1f} s after its start",
                flush=True,
            )
            time.sleep(args.after)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        after = probe(server.port, served.name, probes, roles)
    diffs = {
        role: {
            "max_abs_diff": float(np.abs(after[role] - before[role]).max()),
            "bit_equal": bool(np.array_equal(after[role].view(np.uint32), before[role].view(np.uint32))),
        }
        for role in roles
    }
    requests = classify(attempts, killed, healthy)
    equal = all(d["max_abs_diff"] <= MAX_DIFF for d in diffs.values())
    outside = requests["before"]["failed"] + requests["after"]["failed"]
    passed = equal and not outside and requests["after"]["ok"] > 0
    result = {
        "run_info": {
            "model": served.name,
            "spec": served.spec,
            "path": served.path,
            "clients": args.clients,
            "kill_after_s": args.kill_after,
            "after_s": args.after,
            "probes": len(probes),
            "probe_task": task_label(tasks[0]),
            "threads": args.threads,
            "host": "127.0.0.1",
            "port": server.port,
        },
        "results": {
            "restart_to_healthy_s": restart_to_healthy,
            "outage_s": healthy - killed,
            "requests": requests,
            "probes": diffs,
            "probes_equal": equal,
            "failed_outside_outage": outside,
        },
        "passed": passed,
        "meta_info": meta_info(command_line("benchmarks.serving.restart", argv)),
    }
    text = markdown(result)
    write_result(args.out, result, text)
    print(text)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
