"""What the serving benchmarks share: the models they serve (``NAME=SPEC``, exports made on demand), the queries of a
task, an ``st-leap serve`` subprocess on 127.0.0.1 (started, waited for, stopped or killed), a client with one
persistent HTTP connection, and small statistics.

A model spec is ``NAME=SOURCE`` (or ``SOURCE`` alone, named after it): ``SOURCE`` is a model folder or a packaged
model's name (``minilm``), or ``int8:SOURCE`` / ``onnx:SOURCE`` for that model exported as ONNX int8 / fp32 with
``st_leap.backends.export`` (one graph; one per route for a query encoder for a kept index) into
``<work-dir>/exports/NAME``, made once and reused while it was made from the same source.

A task is ``scifact`` or ``nfcorpus`` (the shared data's BEIR folders) or the path of any BEIR-format folder; its
test queries (``st_leap.evaluation.user_data.read_beir``) are the texts sent as queries, its corpus the documents.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import ROOT

HOST = "127.0.0.1"  # loopback only: nothing here listens on or talks to another interface
DEFAULT_MODELS = ("minilm=minilm", "minilm-int8=int8:minilm")
DEFAULT_TASKS = "scifact,nfcorpus"
DEFAULT_WORK_DIR = "runs/serving"
EXPORT_KINDS = {"int8": "int8", "onnx": None}  # spec prefix -> quantize
#: The help of every script's ``--model`` / ``--models``: what a NAME=SPEC names.
SPEC_HELP = (
    "NAME=SPEC: a folder, a packaged model (minilm), int8:SOURCE or onnx:SOURCE for an export made into --work-dir "
    "(default: %(default)s)"
)
SOURCE_FILE = "serving_source.json"  # beside an export made here: what it was made from


# ------------------------------------------------------------------------------------------------------ models
@dataclass
class ServedModel:
    """A model to serve: its served ``name``, its ``path`` (a folder or a packaged model's folder) and the ``spec``
    it was given as."""

    name: str
    path: str
    spec: str


def split_spec(spec: str) -> tuple[str, str]:
    """``NAME=SOURCE`` -> ``(NAME, SOURCE)``; ``SOURCE`` alone is named after its last path part."""
    if "=" in spec:
        name, source = spec.split("=", 1)
    else:
        source = spec
        kind, _, rest = source.partition(":")
        name = f"{Path(rest).name}-{kind}" if kind in EXPORT_KINDS and rest else Path(source).name
    name, source = name.strip(), source.strip()
    if not name or not source or name.endswith((":query", ":document")):
        raise ValueError(f"a model is NAME=SOURCE (a name not ending in :query or :document), got {spec!r}")
    return name, source


def prepare_model(spec: str, work_dir: str | Path) -> ServedModel:
    """The folder to serve for a spec: a folder or packaged model as it is, an ``int8:`` / ``onnx:`` export made
    (or reused) under ``<work_dir>/exports/<name>``."""
    from st_leap import resources

    name, source = split_spec(spec)
    kind, _, rest = source.partition(":")
    if kind in EXPORT_KINDS and rest:
        resolved = resources.resolve_model(rest)
        folder = Path(work_dir) / "exports" / name
        made = {
            "source": rest,
            "resolved": str(Path(resolved).resolve()) if Path(resolved).exists() else resolved,
            "quantize": EXPORT_KINDS[kind],
            "backend": "onnx",
        }
        marker = folder / SOURCE_FILE
        if not (
            marker.is_file() and json.loads(marker.read_text()) == made and (folder / "st_leap_export.json").is_file()
        ):
            import st_leap
            from st_leap.backends import export

            print(f"exporting {rest} ({kind}) to {folder}", flush=True)
            export(st_leap.load(resolved, device="cpu"), folder, "onnx", quantize=EXPORT_KINDS[kind])
            marker.write_text(json.dumps(made, indent=2) + "\n")
        return ServedModel(name, str(folder), spec)
    return ServedModel(name, resources.resolve_model(source), spec)


def load_like_serve(path: str) -> Any:
    """The model as ``st-leap serve`` loads it (``st_leap.from_pretrained`` with the packaged model's Hub id)."""
    from st_leap import from_pretrained
    from st_leap.cli.common import hub_id_of

    return from_pretrained(path, base_model=hub_id_of(path))


# ------------------------------------------------------------------------------------------------------- tasks
def task_folder(task: str) -> Path:
    """A task's BEIR folder: ``scifact`` / ``nfcorpus`` in the shared data, or a folder path."""
    from st_leap import resources

    if Path(task).is_dir():
        return Path(task)
    return resources.beir_dir(task.lower())


def task_label(task: str) -> str:
    return Path(task).name if Path(task).is_dir() else task.lower()


def read_task(task: str) -> Any:
    """The task's test split (``RetrievalData``: ``queries``, ``corpus``, ``qrels``)."""
    import warnings

    from st_leap.evaluation.user_data import read_beir

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty documents stay in a corpus, with a warning we do not need here
        return read_beir(task_folder(task), split="test")


def task_queries(task: str, limit: int | None = None, seed: int = 0) -> list[str]:
    """The task's test queries, shuffled with ``seed`` (their file order when ``seed`` is ``None``), at most
    ``limit`` of them."""
    queries = list(read_task(task).queries.values())
    if seed is not None:
        random.Random(seed).shuffle(queries)
    return queries[:limit] if limit else queries


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


# ------------------------------------------------------------------------------------------------------ server
def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


_STARTED: list[subprocess.Popen] = []


@atexit.register
def _kill_leftovers() -> None:
    """A benchmark stopped by an error or Ctrl-C leaves no server behind (only the ones it started, by pid)."""
    for process in _STARTED:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@dataclass
class ServerProcess:
    """``python -m st_leap serve PATH`` on 127.0.0.1, its output in a log file; a context manager that stops it.

    Args:
        path: The model folder.
        name: The served name.
        port: The port (default: a free one).
        threads: The server's ``--threads``.
        args: More ``st-leap serve`` arguments (``--max-texts 16``...).
        log_dir: Where the server's output goes (``<name>-<port>.log``).
        start_timeout: Seconds to wait for ``/health`` to answer 200.
    """

    path: str
    name: str
    port: int = 0
    threads: int | None = None
    args: Sequence[str] = ()
    log_dir: str | Path = Path(DEFAULT_WORK_DIR) / "logs"
    start_timeout: float = 300.0
    process: subprocess.Popen | None = field(default=None, init=False)
    log_path: Path | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.port = self.port or free_port()

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server is not started"
        return self.process.pid

    def command(self) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "st_leap",
            "serve",
            str(self.path),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--name",
            self.name,
        ]
        if self.threads:
            command += ["--threads", str(self.threads)]
        return command + [str(arg) for arg in self.args]

    def start(self) -> float:
        """Start the process and wait until ``/health`` answers 200; returns the seconds that took."""
        log_dir = Path(self.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}-{self.port}.log"
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
        started = time.perf_counter()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT, env=env
            )
        _STARTED.append(self.process)
        self.wait_healthy()
        return time.perf_counter() - started

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Wait until ``GET /health`` answers 200 (a dead process or the timeout raise, with the log's tail)."""
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.process.returncode}:\n{self.log_tail()}")
            if health_status(self.port) == 200:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the server did not answer /health within {self.start_timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def health(self) -> dict[str, Any]:
        with Client(self.port, timeout=30) as client:
            return client.request("GET", "/health").json()

    def rss_mib(self) -> float:
        return rss_mib(self.pid)

    def kill(self) -> None:
        """``kill -9``: the process ends at once, nothing is flushed or closed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> None:
        """Ctrl-C (uvicorn's graceful shutdown), then ``kill -9`` if it has not ended within ``timeout`` s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def health_status(port: int) -> int | None:
    """The status of ``GET /health`` on a fresh connection, or ``None`` when nothing answers."""
    with Client(port, timeout=5) as client:
        try:
            return client.request("GET", "/health", retry_stale=False).status
        except (OSError, http.client.HTTPException):
            return None


def batch_totals(port: int, role: str = "query") -> tuple[float, float]:
    """``(texts, encode calls)`` the server has encoded for ``role`` so far, from its ``/metrics``
    (``st_leap_serve_batch_texts`` sum and count)."""
    from prometheus_client.parser import text_string_to_metric_families

    with Client(port, timeout=30) as client:
        text = client.request("GET", "/metrics").body.decode()
    totals = {"st_leap_serve_batch_texts_sum": 0.0, "st_leap_serve_batch_texts_count": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals and sample.labels.get("role") == role:
                totals[sample.name] = float(sample.value)
    return totals["st_leap_serve_batch_texts_sum"], totals["st_leap_serve_batch_texts_count"]


def rss_mib(pid: int) -> float:
    """Resident memory of a process (``VmRSS`` of ``/proc/PID/status``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


# ------------------------------------------------------------------------------------------------------ client
@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One persistent HTTP/1.1 connection to the server (``http.client``), reopened after a failure.

    Args:
        port: The server's port on 127.0.0.1.
        timeout: Seconds a request may take.
    """

    def __init__(self, port: int, timeout: float = 120.0) -> None:
        self.port, self.timeout = port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        retry_stale: bool = True,
    ) -> Reply:
        """Send one request and read the whole answer.

        A kept-alive connection the server has closed meanwhile fails at once; with ``retry_stale`` that request is
        sent once more on a new connection (never a request that failed on a new connection).

        Raises:
            OSError, http.client.HTTPException: the request failed (the connection is closed, the next request
                opens a new one).
        """
        for attempt in (0, 1):
            fresh = self._conn is None
            if fresh:
                self._conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers or {})
                response = self._conn.getresponse()
                data = response.read()
                return Reply(response.status, data, {k.lower(): v for k, v in response.getheaders()})
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if fresh or not retry_stale or attempt:
                    raise
            except (OSError, http.client.HTTPException):
                self.close()
                raise
        raise AssertionError("unreachable")

    def post_json(self, path: str, payload: Any, retry_stale: bool = True) -> Reply:
        body = json.dumps(payload).encode("utf-8")
        return self.request("POST", path, body, {"Content-Type": "application/json"}, retry_stale=retry_stale)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def query_body(name: str, text: str | list[str], role: str = "query", **extra: Any) -> dict[str, Any]:
    """An embeddings request for ``text`` in ``role``, as a search front end sends it."""
    return {"model": name, "input": text, "input_type": role, **extra}


# -------------------------------------------------------------------------------------------------- statistics
def band(values: Sequence[float]) -> dict[str, float | None]:
    """Median and the 25-75% band of ``values`` (``None`` for none)."""
    if not len(values):
        return {"median": None, "p25": None, "p75": None}
    p25, p50, p75 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return {"median": float(p50), "p25": float(p25), "p75": float(p75)}


def fmt_band(stats: dict[str, float | None], scale: float = 1.0, spec: str = ".2f") -> str:
    """``median [p25, p75]`` of :func:`band`, times ``scale``."""
    if stats.get("median") is None:
        return "-"
    return f"{stats['median'] * scale:{spec}} [{stats['p25'] * scale:{spec}}, {stats['p75'] * scale:{spec}}]"


def slope_per_minute(times_s: Sequence[float], values: Sequence[float]) -> float | None:
    """The least-squares slope of ``values`` over ``times_s``, per minute (``None`` for fewer than two points)."""
    if len(times_s) < 2 or max(times_s) == min(times_s):
        return None
    return float(np.polyfit(np.asarray(times_s, dtype=float) / 60.0, np.asarray(values, dtype=float), 1)[0])
