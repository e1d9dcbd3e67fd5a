"""An embedding server for any model st_leap loads (``st-leap serve``): OpenAI-compatible ``POST /v1/embeddings``
with a query/document role, concurrent requests batched together, a bounded queue, Prometheus metrics and, when the
model holds a calibrated monitoring reference, an :class:`~st_leap.monitoring.ExitMonitor` on the live traffic.

It is built on FastAPI and uvicorn (``pip install "st-leap[serve]"``): the OpenAI embeddings request and response
are the convention that clients, vector databases and RAG frameworks already speak (text-embeddings-inference and
Infinity offer the same API), pydantic validates the request body, and FastAPI's ``TestClient`` runs the whole
server in-process in the tests. Neither is imported by ``import st_leap``; they are imported when an app is built.

- :class:`EmbeddingServer`: the model, its served names and roles, the encode worker and its queue, the metrics and
  the monitor. Usable without HTTP: ``server.embed(texts, role="query")``.
- :func:`create_app`: the FastAPI app of a server (``/v1/embeddings``, ``/v1/models``, ``/health``, ``/metrics``).
- :func:`serve`: run that app with uvicorn.

**Roles.** A request picks the role its texts are encoded for in either of two ways, so that every client can:

- the field ``input_type``: ``"query"`` or ``"document"`` (Voyage's and Cohere's convention; Cohere's
  ``"search_query"`` and ``"search_document"`` are accepted too). OpenAI clients send it with ``extra_body``.
- the model name: the server serves ``NAME`` (plain ``encode``), ``NAME:query`` (``encode_query``) and
  ``NAME:document`` (``encode_document``), for clients that can only set ``model``.

Without either, the texts go to plain ``encode``. Documents always run ``encode_document``: for a query encoder for
a kept index (a ``Router`` model) that is the index model, exactly as the index was built.

**Batching.** One worker thread encodes. Requests wait in a queue bounded in *texts* (``max_queue``); the worker
takes the oldest request, adds the following requests of the same role while the batch stays within
``max_batch_size`` texts, waits up to ``max_wait_ms`` for more when it is not full (default 0: the requests that
queued while the last batch was encoding form the next one, and a lone request is never held), encodes the batch in
one call and answers each request with its own rows. A request that would take the queue past ``max_queue`` texts is refused
whole (HTTP 503 with ``Retry-After``); the queue never grows past it.

**The lean path.** A role whose whole route is one exported graph (``st-leap export``, a static depth: pooling and
normalize are inside the graph) is encoded by :func:`lean_encode`: one tokenizer call to numpy, one graph call, and
nothing of ``SentenceTransformer.encode``'s per-call machinery; its token counts come from the same tokenization.
It gives ``encode``'s embeddings (the same batches, so an int8 graph's numbers too). Measured per query in
``benchmarks/results/serving/lean.md``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from st_leap.backends import ExportedEncoder, query_side, route_modules
from st_leap.exit_policy import ROLE_TASKS, ROLES
from st_leap.model import describe_routes, early_exit_module, model_name, router_of
from st_leap.monitoring import REFERENCE_DIR, ExitMonitor, load_references

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "INPUT_TYPES",
    "ApiError",
    "EmbeddingServer",
    "create_app",
    "find_reference",
    "lean_encode",
    "lean_encode_with_tokens",
    "lean_module",
    "role_prompt",
    "serve",
    "served_roles",
]

logger = logging.getLogger(__name__)

SERVE_EXTRA = 'pip install "st-leap[serve]"'
#: The accepted values of a request's ``input_type`` and the role each selects.
INPUT_TYPES = {"query": "query", "document": "document", "search_query": "query", "search_document": "document"}
#: The role each encode method serves, and the method.
ENCODE_METHODS = {"query": "encode_query", "document": "encode_document", "default": "encode"}
#: The suffix of a served name that selects a role (``NAME:query``, ``NAME:document``); ``NAME`` is ``default``.
ROLE_SUFFIXES = ("query", "document")


def _import_serve_extra() -> tuple[Any, Any]:
    """``(fastapi, prometheus_client)``, or an ImportError that says what to install."""
    try:
        import fastapi
        import prometheus_client
    except ImportError as error:
        raise ImportError(
            f"st-leap serve needs FastAPI, uvicorn and prometheus_client: {SERVE_EXTRA} ({error})"
        ) from error
    return fastapi, prometheus_client


class ApiError(Exception):
    """An error answered to the client in the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``.

    Args:
        status: The HTTP status.
        message: What went wrong and what to send instead.
        code: A short machine-readable code (``"empty_input"``, ``"model_not_found"``, ``"queue_full"``...).
        param: The request field at fault, or ``None``.
        headers: Extra response headers (``Retry-After``).
    """

    def __init__(
        self, status: int, message: str, code: str, param: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        return "invalid_request_error" if self.status < 500 else "server_error"

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class QueueFull(Exception):
    """The queue holds too many texts to take a request."""


class ServerClosed(Exception):
    """The server is shutting down."""


# ------------------------------------------------------------------------------------------------ the encode worker
@dataclass
class _Job:
    role: str
    texts: list[str]
    future: Future


class EncodeQueue:
    """The bounded queue and its single encode worker: requests of the same role are encoded together.

    Args:
        encode: ``encode(role, texts) -> (embeddings (N, D) float32, tokens per text)``, called by the worker only.
        max_batch_size: Most texts in one batch (a single larger request is encoded alone, in chunks of this size).
        max_wait_ms: How long the worker waits for more requests of the batch's role when the batch is not full.
        max_queue: Most texts waiting (the batch being encoded is not counted).
        on_batch: Called with ``(role, number of texts)`` after each batch is encoded.
    """

    def __init__(
        self,
        encode: Callable[[str, list[str]], tuple[np.ndarray, list[int]]],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 0.0,
        max_queue: int = 1024,
        on_batch: Callable[[str, int], Any] | None = None,
    ) -> None:
        self._encode, self._on_batch = encode, on_batch
        self.max_batch_size, self.max_wait, self.max_queue = max_batch_size, max_wait_ms / 1000.0, max_queue
        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._queued = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="st-leap-encode", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Texts waiting for the worker."""
        with self._cond:
            return self._queued

    @property
    def requests(self) -> int:
        """Requests waiting for the worker."""
        with self._cond:
            return len(self._jobs)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def submit(self, role: str, texts: list[str]) -> Future:
        """Queue ``texts`` for ``role``; the future resolves to ``(embeddings, tokens)``.

        Raises:
            QueueFull: when the texts would take the queue past ``max_queue``.
            ServerClosed: after :meth:`close`.
        """
        job = _Job(role, list(texts), Future())
        with self._cond:
            if self._closed:
                raise ServerClosed("the server is shutting down")
            if self._queued + len(job.texts) > self.max_queue:
                raise QueueFull(f"{self._queued} texts are waiting; the queue holds at most {self.max_queue}")
            self._jobs.append(job)
            self._queued += len(job.texts)
            self._cond.notify_all()
        return job.future

    def close(self, timeout: float | None = 10.0) -> None:
        """Refuse new requests, fail the waiting ones with :class:`ServerClosed`, stop the worker after its batch."""
        with self._cond:
            self._closed = True
            pending, self._jobs, self._queued = list(self._jobs), deque(), 0
            self._cond.notify_all()
        for job in pending:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(ServerClosed("the server is shutting down"))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _take(self) -> list[_Job] | None:
        """The next batch: the oldest request and the following ones of its role that fit (``None`` once closed)."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            first = self._jobs.popleft()
            batch, size = [first], len(first.texts)
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch_size and not self._closed:
                kept: deque[_Job] = deque()
                full = False
                for job in self._jobs:
                    if not full and job.role == first.role:
                        if size + len(job.texts) <= self.max_batch_size:
                            batch.append(job)
                            size += len(job.texts)
                            continue
                        full = True  # keep the role's order: no later request jumps this one
                    kept.append(job)
                self._jobs = kept
                remaining = deadline - time.monotonic()
                if full or size >= self.max_batch_size or remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._queued -= size
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]  # drop abandoned requests
            if batch:
                self._process(batch)

    def _process(self, batch: list[_Job]) -> None:
        role = batch[0].role
        texts = [text for job in batch for text in job.texts]
        try:
            embeddings, tokens = self._encode(role, texts)
        except Exception as error:
            if len(batch) > 1:  # one bad request must not fail the others: encode each alone
                for job in batch:
                    self._process([job])
                return
            logger.exception("st_leap serve: encoding %d %s text(s) failed", len(texts), role)
            batch[0].future.set_exception(error)
            return
        if self._on_batch is not None:
            try:
                self._on_batch(role, len(texts))
            except Exception:  # metrics must not break serving
                logger.exception("st_leap serve: recording a batch failed")
        start = 0
        for job in batch:
            end = start + len(job.texts)
            job.future.set_result((embeddings[start:end], tokens[start:end]))
            start = end


# ------------------------------------------------------------------------------------------------------ the model
def served_roles(model: SentenceTransformer) -> list[str]:
    """The roles the model encodes: all three, except for an exported graph that computes only some of them
    (``roles`` in its ``st_leap_export.json``).

    Args:
        model: A model loaded by :func:`st_leap.load`.

    Returns:
        Some of ``"query"``, ``"document"``, ``"default"``, in that order.
    """
    roles = []
    for role in ROLES:
        modules = route_modules(model, role)
        info = getattr(modules[0], "info", None) if modules else None
        if type(modules[0] if modules else None).__name__ == "ExportedEncoder" and isinstance(info, dict):
            if role not in info.get("roles", ROLES):
                continue
        roles.append(role)
    return roles


def find_reference(model_path: str | Path) -> dict[str, Any] | None:
    """The monitoring references saved in a model folder, as ``st-leap monitor`` finds them.

    Args:
        model_path: A model folder; ``st-leap calibrate --save-model`` saves its references in
            ``<folder>/st_leap_monitor/``.

    Returns:
        ``{role: RoleReference}``, or ``None`` when the folder holds none.
    """
    folder = Path(model_path)
    return load_references(folder) if (folder / REFERENCE_DIR).is_dir() else None


def role_prompt(model: Any, role: str) -> str | None:
    """The prompt the model prepends for ``role``, as ``encode_query`` / ``encode_document`` / ``encode`` pick it."""
    prompts = getattr(model, "prompts", None) or {}
    name = role if role in ROLE_SUFFIXES and role in prompts else getattr(model, "default_prompt_name", None)
    return (prompts.get(name) or None) if name else None


# ---------------------------------------------------------------------------------------------- the lean path
def lean_module(model: SentenceTransformer, role: str) -> ExportedEncoder | None:
    """The exported graph that alone computes ``role``'s embeddings, or ``None`` when ``role`` needs more than it.

    That is an :class:`~st_leap.backends.ExportedEncoder` (a static-depth export: tokenizer, then one graph holding
    the encoder layers, pooling, normalize and exit map) that is the whole route of ``role``: the only module of an
    exported folder, or the only module of its route in an exported query encoder for a kept index (a ``Router``
    with one graph per route), with nothing after it and no ``truncate_dim`` on the model. Such a route can be
    encoded by :func:`lean_encode`.

    Args:
        model: A loaded model.
        role: ``"query"``, ``"document"`` or ``"default"``.

    Returns:
        The route's ``ExportedEncoder``, or ``None`` (a torch model, a segmented export, extra modules...).
    """
    if len(model) != 1 or getattr(model, "truncate_dim", None) is not None:
        return None
    modules = route_modules(model, role)
    if len(modules) != 1 or not isinstance(modules[0], ExportedEncoder):
        return None
    module = modules[0]
    return module if role in module.info.get("roles", ()) else None


def lean_encode_with_tokens(
    module: ExportedEncoder, texts: Sequence[str], prompt: str | None = None, batch_size: int | None = None
) -> tuple[np.ndarray, list[int]]:
    """:func:`lean_encode`, and the tokens each text was encoded as (its attention mask's sum: the prompt and the
    special tokens counted, the truncation applied)."""
    texts = [str(text) for text in texts]
    if not texts:
        return np.zeros((0, module.get_embedding_dimension()), dtype=np.float32), []
    lengths = [len(text) for text in texts]  # what encode sorts by: the texts as given
    if prompt:
        texts = [prompt + text for text in texts]
    if module.info.get("do_lower_case"):
        texts = [text.lower() for text in texts]
    size = len(texts) if batch_size is None else int(batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if len(texts) <= size:
        chunks = [list(range(len(texts)))]
    else:  # the chunks SentenceTransformer.encode makes: the texts sorted by length (its own sort), then cut
        order = np.argsort([-length for length in lengths])
        chunks = [order[start : start + size].tolist() for start in range(0, len(texts), size)]
    embeddings: np.ndarray | None = None
    tokens = [0] * len(texts)
    for chunk in chunks:
        features = module.tokenizer(
            [texts[i] for i in chunk],
            padding=True,
            truncation="longest_first",
            max_length=module.max_seq_length,
            return_tensors="np",
        )
        ids = np.ascontiguousarray(features["input_ids"], dtype=np.int64)
        mask = np.ascontiguousarray(features["attention_mask"], dtype=np.int64)
        types = features.get("token_type_ids")
        types = np.zeros_like(ids) if types is None else np.ascontiguousarray(types, dtype=np.int64)
        out = np.asarray(module.runner(ids, mask, types), dtype=np.float32)
        if len(chunks) == 1:
            embeddings = out
        else:
            if embeddings is None:
                embeddings = np.empty((len(texts), out.shape[1]), dtype=np.float32)
            embeddings[chunk] = out
        for i, count in zip(chunk, mask.sum(axis=1).tolist()):
            tokens[i] = int(count)
    return embeddings, tokens


def lean_encode(
    module: ExportedEncoder, texts: Sequence[str], prompt: str | None = None, batch_size: int | None = None
) -> np.ndarray:
    """Encode texts through an exported graph with nothing else around it: the tokenizer (one call per batch, to
    numpy), then one call of the graph's runner, which already pools and normalizes.

    It computes what ``SentenceTransformer.encode`` computes through the same module (its ``preprocess``: the
    prompt prepended, lower-cased when the export says so, padded and truncated at the module's max sequence
    length; then its ``forward``), without the per-call machinery around it (argument checks, prompt resolution,
    length sorting, torch tensors, the output's stacking and conversion). Batches of at most ``batch_size`` texts
    are cut as ``encode`` cuts them, so an int8 graph (whose activation scales depend on the batch) gives the same
    numbers.

    Args:
        module: The route's :class:`~st_leap.backends.ExportedEncoder` (:func:`lean_module`).
        texts: The texts.
        prompt: The prompt ``encode`` would prepend (:func:`role_prompt` of the model and role), or ``None``.
        batch_size: Most texts per graph call (``None``: all in one call).

    Returns:
        ``(len(texts), dimension)`` float32 embeddings, in the order of ``texts``.
    """
    return lean_encode_with_tokens(module, texts, prompt, batch_size)[0]


class EmbeddingServer:
    """A model served by name and role, with one encode worker, a bounded queue, metrics and an optional monitor.

    Args:
        model: A model loaded by :func:`st_leap.load` / :func:`st_leap.from_pretrained`: an st_leap model, a query
            encoder for a kept index (a ``Router``) or an exported folder.
        name: The served name (default: the model's name). ``NAME:query`` and ``NAME:document`` are served too.
        reference: The monitoring reference: a folder holding ``st_leap_monitor/``, a ``{role: RoleReference}``
            mapping, or ``None`` (no monitor). Roles it covers are encoded through an
            :class:`~st_leap.monitoring.ExitMonitor` whose fallback acts on the live requests; for a query encoder
            for a kept index only the query route, the part that can exit, is monitored.
        monitor_options: :class:`~st_leap.monitoring.ExitMonitor` arguments (``window``, ``sample_rate``,
            ``fallback``, bands...).
        monitor: ``False`` serves without a monitor even with a reference.
        max_batch_size: Most texts encoded in one call.
        max_wait_ms: How long the worker waits for more requests of a role when its batch is not full.
        max_queue: Most texts waiting for the worker; a request that would pass it is answered 503.
        max_texts: Most texts in one request (at most ``max_queue``).
        max_chars: Most characters in one text.
        threads: Torch's CPU thread count (``torch.set_num_threads``); ``None`` leaves it.
        lean: Encode the roles whose whole route is one exported graph (:func:`lean_module`) with
            :func:`lean_encode` (tokenizer, graph, nothing else; the same embeddings as ``encode``, and the token
            counts from the same tokenization); ``False``: through ``encode`` like every other model.
        registry: The ``prometheus_client.CollectorRegistry`` of the metrics (default: a new one for this server).

    Raises:
        ValueError: for a bad limit, a served name ending in ``:query`` / ``:document``, or a reference whose depth
            does not match the model.
        ImportError: without ``st-leap[serve]``.
    """

    def __init__(
        self,
        model: SentenceTransformer,
        *,
        name: str | None = None,
        reference: Any = None,
        monitor_options: Mapping[str, Any] | None = None,
        monitor: bool = True,
        max_batch_size: int = 32,
        max_wait_ms: float = 0.0,
        max_queue: int = 1024,
        max_texts: int = 256,
        max_chars: int = 8192,
        threads: int | None = None,
        lean: bool = True,
        registry: Any = None,
    ) -> None:
        _, prometheus_client = _import_serve_extra()
        for key, value in (
            ("max_batch_size", max_batch_size),
            ("max_queue", max_queue),
            ("max_texts", max_texts),
            ("max_chars", max_chars),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an int >= 1, got {value!r}")
        if not (isinstance(max_wait_ms, int | float) and math.isfinite(max_wait_ms) and max_wait_ms >= 0):
            raise ValueError(f"max_wait_ms must be a number >= 0, got {max_wait_ms!r}")
        if max_texts > max_queue:
            raise ValueError(
                f"max_texts ({max_texts}) is more than max_queue ({max_queue}): such a request could never be queued"
            )
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise ValueError(f"threads must be an int >= 1, got {threads!r}")
            import torch

            torch.set_num_threads(threads)
        self.model = model
        self.name = str(name or model_name(model))
        if not self.name or self.name.endswith(tuple(f":{suffix}" for suffix in ROLE_SUFFIXES)):
            raise ValueError(
                f"the served name must be non-empty and not end in :query or :document, got {self.name!r}"
            )
        self.roles = served_roles(model)
        self.names = {self._served_name(role): role for role in ("default", *ROLE_SUFFIXES) if role in self.roles}
        self.max_texts, self.max_chars = max_texts, max_chars
        self.routes = describe_routes(model)
        self.dimension = model.get_embedding_dimension()
        self.created = int(time.time())
        self._modules = {role: route_modules(model, role)[0] for role in self.roles}
        self._prompts = {role: role_prompt(model, role) for role in self.roles}
        self._lean = {role: lean_module(model, role) for role in self.roles} if lean else {}
        self.lean_roles = [role for role, module in self._lean.items() if module is not None]

        self.registry = registry if registry is not None else prometheus_client.CollectorRegistry()
        self.monitor, self.monitored_roles, self.monitor_reason = None, [], None
        self._monitor_prompts: dict[str, str | None] = {}
        self._setup_monitor(reference, dict(monitor_options or {}), monitor)
        self._metrics = _ServerMetrics(prometheus_client, self.registry, max_batch_size, self)
        self.queue = EncodeQueue(
            self._encode,
            max_batch_size=max_batch_size,
            max_wait_ms=float(max_wait_ms),
            max_queue=max_queue,
            on_batch=self._metrics.observe_batch,
        )

    # ------------------------------------------------------------------------------------------------ public
    def resolve_role(self, model: str | None, input_type: str | None = None) -> str:
        """The role a request asks for, by its ``model`` name and its ``input_type``.

        Args:
            model: The request's ``model``: ``NAME``, ``NAME:query``, ``NAME:document`` or ``None``.
            input_type: The request's ``input_type`` (:data:`INPUT_TYPES`) or ``None``.

        Returns:
            ``"query"``, ``"document"`` or ``"default"`` (plain ``encode``, when neither names a role).

        Raises:
            ApiError: 404 for a name this server does not serve; 400 for an unknown ``input_type``, one that
                contradicts the name's suffix, or a role this model does not encode.
        """
        if model is None:
            named = None
        elif model in self.names:
            named = self.names[model]
        elif model == self.name:  # the plain name of a model without plain encode (an export of the query route)
            named = "default"
        else:
            suffix = model.rsplit(":", 1)[-1] if ":" in model else None
            known = ", ".join(repr(served) for served in self.names)
            if model.startswith(self.name + ":") and suffix in ROLE_SUFFIXES:
                raise ApiError(
                    404,
                    f"this model does not encode the {suffix!r} role: it serves {known}",
                    "model_not_found",
                    "model",
                )
            raise ApiError(
                404, f"the model {model!r} is not served here; this server serves {known}", "model_not_found", "model"
            )
        role = named
        if input_type is not None:
            if input_type not in INPUT_TYPES:
                raise ApiError(
                    400,
                    f"input_type must be 'query' or 'document' (or Cohere's 'search_query' / 'search_document'), "
                    f"got {input_type!r}",
                    "invalid_input_type",
                    "input_type",
                )
            wanted = INPUT_TYPES[input_type]
            if named in ROLE_SUFFIXES and named != wanted:
                raise ApiError(
                    400,
                    f"the model {model!r} encodes the {named!r} role but input_type asks for {wanted!r}: send one",
                    "conflicting_roles",
                    "input_type",
                )
            role = wanted
        role = role or "default"
        if role not in self.roles:
            known = ", ".join(repr(served) for served in self.names)
            raise ApiError(
                400,
                f"this model does not encode the {role!r} role (an export of one route): it serves {known}",
                "role_not_served",
                "input_type" if input_type is not None else "model",
            )
        return role

    def check_inputs(self, inputs: str | Sequence[str]) -> list[str]:
        """The texts of a request, checked against the server's limits.

        Args:
            inputs: The request's ``input`` (validated as a string or a list of strings).

        Returns:
            The texts as a list.

        Raises:
            ApiError: 400 for no text, an empty text, too many texts, a text over ``max_chars`` characters or a
                text holding an unpaired surrogate (which JSON can escape but no tokenizer takes).
        """
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts:
            raise ApiError(400, "input is an empty list: send at least one text", "empty_input", "input")
        if len(texts) > self.max_texts:
            raise ApiError(
                400,
                f"input holds {len(texts)} texts; this server takes at most {self.max_texts} per request: split it",
                "too_many_inputs",
                "input",
            )
        for index, text in enumerate(texts):
            where = "input" if isinstance(inputs, str) else f"input[{index}]"
            if not text:
                raise ApiError(
                    400, f"{where} is an empty string: every text needs at least one character", "empty_input", "input"
                )
            if len(text) > self.max_chars:
                raise ApiError(
                    400,
                    f"{where} has {len(text)} characters; this server takes at most {self.max_chars} per text",
                    "input_too_long",
                    "input",
                )
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:  # JSON can escape a lone surrogate; no tokenizer takes one
                raise ApiError(
                    400,
                    f"{where} holds an unpaired surrogate ({text[error.start]!r} at character {error.start}), which "
                    "is not a Unicode character: send the text as valid Unicode",
                    "invalid_text",
                    "input",
                ) from None
        return texts

    def submit(self, role: str, texts: list[str]) -> Future:
        """Queue texts for the encode worker.

        Args:
            role: ``"query"``, ``"document"`` or ``"default"``.
            texts: Texts checked by :meth:`check_inputs`.

        Returns:
            A future of ``(embeddings (N, D) float32, tokens per text)``; an encode failure is its exception.

        Raises:
            ApiError: 503 with ``Retry-After`` when the queue is full or the server is shutting down.
        """
        try:
            return self.queue.submit(role, texts)
        except QueueFull as error:
            raise ApiError(
                503,
                f"the server is busy: {error}. Retry after a second",
                "queue_full",
                headers={"Retry-After": "1"},
            ) from None
        except ServerClosed as error:
            raise ApiError(503, str(error), "shutting_down", headers={"Retry-After": "1"}) from None

    def embed(self, texts: str | Sequence[str], role: str = "default") -> np.ndarray:
        """Encode through the queue and wait, as a request does, without HTTP.

        Args:
            texts: A text or texts.
            role: ``"query"``, ``"document"`` or ``"default"``.

        Returns:
            The embeddings a request for ``role`` gets, ``(N, D)`` float32.

        Raises:
            ValueError: for a role the model does not encode.
            ApiError: for texts over the limits, or a full queue.
        """
        if role not in self.roles:
            raise ValueError(f"role must be one of {self.roles}, got {role!r}")
        embeddings, _ = self.submit(role, self.check_inputs(texts)).result()
        return embeddings

    def served_name(self, role: str) -> str:
        """The served name of ``role``: ``NAME``, ``NAME:query`` or ``NAME:document``."""
        return self._served_name(role)

    def monitor_state(self) -> dict[str, Any]:
        """Whether live traffic is monitored and, per monitored role, its alert and fallback state."""
        if self.monitor is None:
            return {"enabled": False, "reason": self.monitor_reason}
        snapshot = self.monitor.snapshot()
        roles = {}
        for role in self.monitored_roles:
            state = snapshot["roles"].get(role) or {}
            reference = self.monitor.reference_for(ROLE_TASKS[role])
            roles[role] = {
                "alert": bool(state.get("alert", False)),
                "fallback_active": bool(state.get("fallback_active", False)),
                "texts": state.get("texts", 0),
                "windows": state.get("windows", 0),
                "alerts": state.get("alerts", 0),
                "fallbacks": state.get("fallbacks", 0),
                "rolling": state.get("rolling"),
                "reference": {
                    "expected_layers": reference.expected_layers,
                    "exit_rate": reference.exit_rate,
                    "nn_overlap": reference.nn_overlap,
                    "nn_k": reference.nn_k,
                },
            }
        return {
            "enabled": True,
            "roles": roles,
            "settings": snapshot["settings"],
            "events": snapshot["events"][-10:],
        }

    def health(self) -> dict[str, Any]:
        """What ``GET /health`` answers: the model, its roles and names, the queue, the limits, the roles encoded on
        the lean path (:func:`lean_encode`) and the monitor."""
        return {
            "status": "ok" if self.queue.alive else "stopped",
            "model": self.name,
            "served_names": dict(self.names),
            "roles": list(self.roles),
            "routes": self.routes,
            "embedding_dimension": self.dimension,
            "queue": {
                "texts": self.queue.depth,
                "requests": self.queue.requests,
                "max_queue_texts": self.queue.max_queue,
                "max_batch_size": self.queue.max_batch_size,
                "max_wait_ms": self.queue.max_wait * 1000.0,
            },
            "limits": {"max_texts": self.max_texts, "max_chars": self.max_chars},
            "lean_roles": list(self.lean_roles),
            "monitor": self.monitor_state(),
        }

    def record(self, role: str | None, status: int, seconds: float | None = None) -> None:
        """Count one request of ``role`` (``None``: not known) answered with ``status`` and, if answered,
        its latency."""
        self._metrics.observe_request(role, status, seconds)

    def close(self) -> None:
        """Stop the worker; waiting requests are answered 503."""
        self.queue.close()

    # ----------------------------------------------------------------------------------------------- private
    def _served_name(self, role: str) -> str:
        return self.name if role == "default" else f"{self.name}:{role}"

    def _setup_monitor(self, reference: Any, options: dict[str, Any], enabled: bool) -> None:
        router = router_of(self.model) is not None
        target = query_side(self.model) if router else self.model
        if not enabled:
            self.monitor_reason = "monitoring is turned off"
            return
        if early_exit_module(target) is None:
            self.monitor_reason = (
                "this model cannot exit (an exported graph runs one fixed depth), so there is nothing to monitor"
            )
            return
        if reference is None:
            self.monitor_reason = (
                f"no monitoring reference: st-leap calibrate --save-model saves one in the model folder "
                f"({REFERENCE_DIR}/), st_leap.monitoring.save_references another"
            )
            return
        options.pop("registry", None)
        monitor = ExitMonitor(target, reference, registry=self.registry, **options)
        candidates = ["query"] if router else list(self.roles)
        roles = [role for role in candidates if role in self.roles and monitor.reference_for(ROLE_TASKS[role])]
        if not roles:
            what = "only its query route can exit" if router else f"it serves {self.roles}"
            self.monitor_reason = f"the reference covers the roles {sorted(monitor.references)}, and {what}"
            return
        for role in roles:
            depth = monitor.reference_for(ROLE_TASKS[role]).num_layers
            if depth != monitor.num_layers:
                raise ValueError(
                    f"the {role!r} monitoring reference has {depth} layers and the served encoder "
                    f"{monitor.num_layers}: "
                    "it was measured on another model"
                )
        self.monitor, self.monitored_roles = monitor, roles
        # A Router's query side is a model of its own, without the Router model's prompts: pass the prompt.
        self._monitor_prompts = {role: self._prompts[role] if router else None for role in roles}

    def _encode(self, role: str, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Run by the worker: one batch of one role, through the monitor when it watches the role, through
        :func:`lean_encode` when the role's route is one exported graph, else through the role's encode method."""
        tokens = None
        if role in self.monitored_roles:
            prompt = self._monitor_prompts.get(role)
            result = self.monitor.encode(
                texts,
                task=ROLE_TASKS[role],
                batch_size=self.queue.max_batch_size,
                **({"prompt": prompt} if prompt else {}),
            )
            embeddings = result.embeddings
        elif self._lean.get(role) is not None:
            embeddings, tokens = lean_encode_with_tokens(
                self._lean[role], texts, self._prompts[role], batch_size=self.queue.max_batch_size
            )
        else:
            encode = getattr(self.model, ENCODE_METHODS[role])
            embeddings = encode(
                texts, batch_size=self.queue.max_batch_size, show_progress_bar=False, convert_to_numpy=True
            )
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.shape[0] != len(texts):
            raise RuntimeError(f"the model returned {embeddings.shape[0]} embeddings for {len(texts)} texts")
        if not np.isfinite(embeddings).all():
            raise RuntimeError("the model returned non-finite values (NaN or infinity)")
        return embeddings, tokens if tokens is not None else self._count_tokens(role, texts)

    def _count_tokens(self, role: str, texts: list[str]) -> list[int]:
        """Tokens each text is encoded as: the role's tokenizer, with its prompt and special tokens, truncated at
        the encoder's max sequence length."""
        features = self._modules[role].preprocess(texts, prompt=self._prompts[role])
        mask = features.get("attention_mask") if isinstance(features, Mapping) else None
        if mask is None:
            return [0] * len(texts)
        return [int(n) for n in mask.sum(dim=1).tolist()]


class _ServerMetrics:
    """The server's Prometheus metrics (``st_leap_serve_*``), in the server's own registry."""

    def __init__(self, prometheus_client: Any, registry: Any, max_batch_size: int, server: EmbeddingServer) -> None:
        from prometheus_client.core import GaugeMetricFamily

        Counter, Gauge, Histogram = prometheus_client.Counter, prometheus_client.Gauge, prometheus_client.Histogram
        self.requests = Counter(
            "st_leap_serve_requests",
            "embedding requests, by role and HTTP status",
            ["role", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "st_leap_serve_request_seconds", "time to answer an embedding request", ["role"], registry=registry
        )
        self.texts = Counter("st_leap_serve_texts", "texts encoded", ["role"], registry=registry)
        buckets = sorted(
            {2**n for n in range(max_batch_size.bit_length()) if 2**n <= max_batch_size} | {max_batch_size}
        )
        self.batch = Histogram(
            "st_leap_serve_batch_texts",
            "texts per encode call",
            ["role"],
            buckets=[float(b) for b in buckets],
            registry=registry,
        )
        queue = Gauge("st_leap_serve_queue_texts", "texts waiting for the encode worker", registry=registry)
        queue.set_function(lambda: server.queue.depth if hasattr(server, "queue") else 0)
        requests = Gauge("st_leap_serve_queue_requests", "requests waiting for the encode worker", registry=registry)
        requests.set_function(lambda: server.queue.requests if hasattr(server, "queue") else 0)
        for role in server.roles:
            for metric in (self.latency, self.texts, self.batch):
                metric.labels(role=role)

        class _MonitorState:
            """``st_leap_serve_monitor_alert``: 1 while a monitored role is in alert (read at scrape time)."""

            def collect(self) -> Any:
                family = GaugeMetricFamily(
                    "st_leap_serve_monitor_alert", "1 while the monitor holds an alert on the role", labels=["role"]
                )
                if server.monitor is not None:
                    for role, state in server.monitor_state()["roles"].items():
                        family.add_metric([role], 1.0 if state["alert"] else 0.0)
                yield family

        registry.register(_MonitorState())

    def observe_request(self, role: str | None, status: int, seconds: float | None) -> None:
        self.requests.labels(role=role or "unknown", status=str(status)).inc()
        if seconds is not None and role is not None and status == 200:
            self.latency.labels(role=role).observe(seconds)

    def observe_batch(self, role: str, num_texts: int) -> None:
        self.batch.labels(role=role).observe(num_texts)
        self.texts.labels(role=role).inc(num_texts)


# ------------------------------------------------------------------------------------------------------ the app
def _request_model() -> Any:
    """The pydantic model of a ``POST /v1/embeddings`` body (strict: numbers are not turned into strings)."""
    from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

    class EmbeddingRequest(BaseModel):
        """OpenAI's embeddings request, plus ``input_type``; unknown fields (``user``...) are ignored."""

        model_config = ConfigDict(extra="ignore")

        input: StrictStr | list[StrictStr]
        model: StrictStr | None = None
        encoding_format: Literal["float", "base64"] = "float"
        input_type: StrictStr | None = None
        dimensions: StrictInt | None = None
        user: StrictStr | None = None

    return EmbeddingRequest


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _input_error(value: Any) -> ApiError:
    """Why a request's ``input`` is not a string or a list of strings, in words."""
    param = "input"
    if isinstance(value, list):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return ApiError(
                400,
                "input is an array of token ids, which this server does not take: send the texts as strings (the "
                "server tokenizes them with the model's tokenizer)",
                "unsupported_input",
                param,
            )
        for index, item in enumerate(value):
            if isinstance(item, list):
                if item and all(isinstance(v, int) and not isinstance(v, bool) for v in item):
                    return ApiError(
                        400,
                        f"input[{index}] is an array of token ids, which this server does not take: send the texts as "
                        "strings (the server tokenizes them with the model's tokenizer)",
                        "unsupported_input",
                        param,
                    )
                return ApiError(
                    400,
                    f"input[{index}] is a list: nested lists are not supported, send a string or a flat list of "
                    "strings",
                    "invalid_type",
                    param,
                )
            if not isinstance(item, str):
                return ApiError(
                    400, f"input[{index}] is {_describe(item)}: every input must be a string", "invalid_type", param
                )
    if value is None:
        return ApiError(400, "input is required: a string or a list of strings", "missing_input", param)
    return ApiError(
        400, f"input is {_describe(value)}: it must be a string or a list of strings", "invalid_type", param
    )


def _validation_error(error: Any, data: dict[str, Any]) -> ApiError:
    """An :class:`ApiError` for a pydantic ``ValidationError`` of a request body ``data``."""
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else None
    if field == "input":
        return _input_error(data.get("input"))
    value = data.get(field)
    if field == "encoding_format":
        return ApiError(
            400, f"encoding_format must be 'float' or 'base64', got {value!r}", "invalid_encoding_format", field
        )
    expected = {"dimensions": "an integer", "model": "a string", "input_type": "a string"}.get(field or "", "valid")
    return ApiError(400, f"{field} must be {expected}, got {_describe(value)}", "invalid_type", field)


def _encode_rows(embeddings: np.ndarray, encoding_format: str) -> list[Any]:
    if encoding_format == "base64":
        little = np.ascontiguousarray(embeddings, dtype="<f4")
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    return embeddings.tolist()


async def _read_body(request: Any, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (by its Content-Length, or as it streams in)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, f"the request body has {declared} bytes; this server takes at most {limit}", "body_too_large"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is over {limit} bytes, this server's limit", "body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(server: EmbeddingServer) -> Any:
    """The FastAPI app of ``server``: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /health`` and
    ``GET /metrics``. The app closes the server when it shuts down.

    Args:
        server: The :class:`EmbeddingServer` to serve.

    Returns:
        A ``fastapi.FastAPI`` app, for uvicorn (:func:`serve`) or ``fastapi.testclient.TestClient``.

    Raises:
        ImportError: without ``st-leap[serve]``.
    """
    fastapi, prometheus_client = _import_serve_extra()
    from contextlib import asynccontextmanager

    from fastapi.responses import JSONResponse, Response
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException

    from st_leap.version import __version__

    request_model = _request_model()
    # The largest body worth reading: every text at its limit, JSON-escaped (at most 6 bytes a character), plus slack.
    body_limit = server.max_texts * (6 * server.max_chars + 16) + 64 * 1024

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        server.close()

    app = fastapi.FastAPI(
        title="st-leap embeddings",
        version=__version__,
        description=f"Embeddings of {server.name} (OpenAI-compatible /v1/embeddings).",
        lifespan=lifespan,
    )

    def error_response(error: ApiError) -> Any:
        return JSONResponse(error.to_dict(), status_code=error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, exc: Any) -> Any:  # 404 and 405 of unknown routes, in the OpenAI shape
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code))

    async def embeddings(request: Any) -> Any:
        started = time.perf_counter()
        role, status = None, 499  # 499: the client went away before the answer
        try:
            body = await _read_body(request, body_limit)
            try:
                data = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ApiError(400, f"the request body is not valid JSON: {error}", "invalid_json") from None
            except RecursionError:  # arrays or objects nested deeper than the JSON decoder goes
                raise ApiError(
                    400,
                    "the request body nests arrays or objects too deep to read: send a JSON object whose input is a "
                    "string or a flat list of strings",
                    "invalid_json",
                ) from None
            if not isinstance(data, dict):
                raise ApiError(400, f"the request body must be a JSON object, got {_describe(data)}", "invalid_json")
            try:
                parsed = request_model.model_validate(data)
            except ValidationError as error:
                raise _validation_error(error, data) from None
            role = server.resolve_role(parsed.model, parsed.input_type)
            if parsed.dimensions is not None and parsed.dimensions != server.dimension:
                raise ApiError(
                    400,
                    f"dimensions {parsed.dimensions} is not supported: this model returns {server.dimension} "
                    "dimensions",
                    "unsupported_dimensions",
                    "dimensions",
                )
            texts = server.check_inputs(parsed.input)
            future = server.submit(role, texts)
            try:
                vectors, tokens = await asyncio.wrap_future(future)
            except ServerClosed as error:
                raise ApiError(503, str(error), "shutting_down", headers={"Retry-After": "1"}) from None
            except Exception as error:
                raise ApiError(500, f"encoding failed: {type(error).__name__}: {error}", "encode_failed") from None
            used = sum(tokens)
            payload = {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": index, "embedding": row}
                    for index, row in enumerate(_encode_rows(vectors, parsed.encoding_format))
                ],
                "model": server.served_name(role),
                "usage": {"prompt_tokens": used, "total_tokens": used},
            }
            status = 200
            return JSONResponse(payload)
        except ApiError as error:
            status = error.status
            return error_response(error)
        except Exception as error:  # a bug of ours: a 500 with a message, and the server goes on
            logger.exception("st_leap serve: a request failed")
            status = 500
            return error_response(ApiError(500, f"internal error: {type(error).__name__}: {error}", "internal_error"))
        finally:
            server.record(role, status, time.perf_counter() - started)

    # FastAPI hands the endpoint the raw request by its annotation; fastapi is imported here, not at module level,
    # so the class is set on the function (the body is read, limited and validated above).
    embeddings.__annotations__["request"] = fastapi.Request
    schema = {"content": {"application/json": {"schema": request_model.model_json_schema()}}, "required": True}
    app.post("/v1/embeddings", openapi_extra={"requestBody": schema})(embeddings)

    @app.get("/v1/models")
    async def models() -> Any:
        return {
            "object": "list",
            "data": [
                {"id": served, "object": "model", "created": server.created, "owned_by": "st-leap", "role": role}
                for served, role in server.names.items()
            ],
        }

    @app.get("/health")
    async def health() -> Any:
        state = server.health()
        return JSONResponse(state, status_code=200 if state["status"] == "ok" else 503)

    @app.get("/metrics")
    async def metrics() -> Any:
        return Response(
            prometheus_client.generate_latest(server.registry), media_type=prometheus_client.CONTENT_TYPE_LATEST
        )

    return app


def serve(server: EmbeddingServer, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info") -> None:
    """Run :func:`create_app` of ``server`` with uvicorn, in one process (one model, one encode worker), until
    interrupted.

    Args:
        server: The :class:`EmbeddingServer`.
        host: The address to bind (``127.0.0.1``: this machine only; ``0.0.0.0``: every interface).
        port: The port.
        log_level: uvicorn's log level.

    Raises:
        ImportError: without ``st-leap[serve]``.
    """
    app = create_app(server)
    try:
        import uvicorn
    except ImportError as error:
        raise ImportError(f"st-leap serve needs uvicorn: {SERVE_EXTRA}") from error
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        server.close()
