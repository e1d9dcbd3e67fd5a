"""st_leap.serving and ``st-leap serve``: the OpenAI-compatible embedding server, in-process through FastAPI's
TestClient (no network), on tiny random encoders: a query encoder for a kept index (a ``Router``: queries to a
2-layer student with an exit map, documents to the 4-layer index model), a plain st_leap model, a calibrated model
with a monitoring reference, and ONNX exports."""

from __future__ import annotations

import base64
import contextlib
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import st_leap
from st_leap.backends import query_side, route_modules
from st_leap.cli import main
from st_leap.monitoring import build_reference, save_references
from tests.conftest import SENTENCES, WORDS, build_tiny_model_dir, threshold_between

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from st_leap import serving  # noqa: E402
from st_leap.serving import EmbeddingServer, create_app  # noqa: E402

ATOL = 1e-5


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return list(dict.fromkeys(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(n)))


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    """A query encoder for a kept index as ``fit_query_encoder`` saves it, and its folder."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize

    from st_leap.exit_maps import fit_exit_maps
    from st_leap.query_encoder import build_router, init_student

    index_dir = build_tiny_model_dir(tmp_path_factory.mktemp("serve_index"), "bert", num_layers=4)
    index = SentenceTransformer(index_dir, device="cpu")
    index.append(Normalize())
    student = init_student(index_dir, 2, "spread")
    texts = _texts(200, seed=0)
    fit_exit_maps(student, texts, target_embeddings=index.encode(texts), show_progress_bar=False)
    folder = tmp_path_factory.mktemp("serve_router") / "qe"
    build_router(student, index).save(str(folder))
    return st_leap.load(str(folder), device="cpu"), folder


@pytest.fixture(scope="module")
def plain(tiny_bert_dir):
    """A plain st_leap model whose query role runs 2 layers and whose other roles run all 4."""
    return st_leap.from_pretrained(tiny_bert_dir, truncate_layers={"query": 2, "default": None}, device="cpu")


@contextlib.contextmanager
def running(model, **kwargs):
    """A server for ``model`` and a TestClient on its app; the server is closed at the end."""
    kwargs.setdefault("name", "tiny")
    server = EmbeddingServer(model, **kwargs)
    try:
        with TestClient(create_app(server)) as client:
            yield server, client
    finally:
        server.close()


def _vectors(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["index"] for item in data] == list(range(len(data)))
    assert all(item["object"] == "embedding" for item in data)
    return np.array([item["embedding"] for item in data], dtype=np.float32)


def _metric(client, name: str, **labels: str) -> float | None:
    """The value of one sample of ``GET /metrics``, or ``None`` when it is not there."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:
    """Wait until ``condition()`` holds (a synchronisation point, not a timing check)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.005)


# ---------------------------------------------------------------------------------------------------------- roles
def test_roles_by_input_type_and_by_model_name_run_the_routers_encode_methods(router):
    """Queries (input_type 'query', Cohere's 'search_query', or the name NAME:query) get the Router's encode_query
    output; documents (input_type 'document' or NAME:document) and the plain name get encode_document, the index
    model exactly; the response names the served role and counts the tokens with the model's tokenizer."""
    model, _ = router
    texts = SENTENCES[:5]
    want_query, want_document = model.encode_query(texts), model.encode_document(texts)
    assert np.abs(want_query - want_document).max() > 1e-2  # the routes differ: a swap would be caught
    tokenizer = route_modules(model, "query")[0].tokenizer
    tokens = sum(len(tokenizer(text)["input_ids"]) for text in texts)
    with running(model) as (_, client):
        for body, want, served in [
            ({"model": "tiny", "input_type": "query"}, want_query, "tiny:query"),
            ({"model": "tiny:query"}, want_query, "tiny:query"),
            ({"model": "tiny:query", "input_type": "query"}, want_query, "tiny:query"),
            ({"input_type": "search_query"}, want_query, "tiny:query"),
            ({"model": "tiny", "input_type": "document"}, want_document, "tiny:document"),
            ({"model": "tiny:document"}, want_document, "tiny:document"),
            ({"model": "tiny"}, model.encode(texts), "tiny"),
            ({}, want_document, "tiny"),
        ]:
            response = client.post("/v1/embeddings", json={"input": texts, **body})
            np.testing.assert_allclose(_vectors(response), want, atol=ATOL, err_msg=str(body))
            answer = response.json()
            assert answer["object"] == "list" and answer["model"] == served
            assert answer["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
        listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    assert [(m["id"], m["role"], m["object"]) for m in listed["data"]] == [
        ("tiny", "default", "model"),
        ("tiny:query", "query", "model"),
        ("tiny:document", "document", "model"),
    ]


def test_a_plain_model_serves_each_role_with_its_own_setting(plain):
    """A plain st_leap model's roles are its encode_query / encode_document / encode, each with its own exit
    setting (here queries at depth 2)."""
    texts = SENTENCES[2:6]
    with running(plain) as (_, client):
        query = _vectors(client.post("/v1/embeddings", json={"input": texts, "input_type": "query"}))
        document = _vectors(client.post("/v1/embeddings", json={"input": texts, "model": "tiny:document"}))
    np.testing.assert_allclose(query, plain.encode_query(texts), atol=ATOL)
    np.testing.assert_allclose(document, plain.encode_document(texts), atol=ATOL)
    assert np.abs(query - document).max() > 1e-2


def test_float_and_base64_give_the_same_little_endian_float32(router):
    model, _ = router
    with running(model) as (_, client):
        floats = _vectors(client.post("/v1/embeddings", json={"input": SENTENCES[:3], "model": "tiny:query"}))
        response = client.post(
            "/v1/embeddings", json={"input": SENTENCES[:3], "model": "tiny:query", "encoding_format": "base64"}
        )
        single = client.post("/v1/embeddings", json={"input": SENTENCES[1], "model": "tiny:query"})
    assert response.status_code == 200
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in response.json()["data"]]
    )
    assert decoded.shape == floats.shape == (3, model.get_embedding_dimension())
    np.testing.assert_array_equal(decoded, floats)
    np.testing.assert_allclose(_vectors(single)[0], floats[1], atol=ATOL)  # one string: one embedding, index 0


# ------------------------------------------------------------------------------------------------------- batching
def test_concurrent_requests_are_batched_by_role_and_each_gets_its_own_rows(router, monkeypatch):
    """Sixteen requests at once, queries and documents mixed: the first batch is held until the other requests
    are queued, so the rest go in batches of their role; every request gets its own texts' embeddings for its
    role, and the batch histogram shows batches of more than one text."""
    model, _ = router
    texts = _texts(16, seed=5)
    roles = ["query" if i % 2 else "document" for i in range(len(texts))]
    want = {"query": model.encode_query(texts), "document": model.encode_document(texts)}
    encode = model.encode
    first = threading.Event()

    with running(model, max_batch_size=32) as (server, client):

        def held(inputs, *args, **kwargs):
            if not first.is_set():
                first.set()
                _wait_for(lambda: server.queue.depth + len(inputs) == len(texts), "the other requests")
            return encode(inputs, *args, **kwargs)

        monkeypatch.setattr(model, "encode", held)

        def post(i: int):
            return client.post("/v1/embeddings", json={"input": [texts[i]], "input_type": roles[i]})

        with ThreadPoolExecutor(len(texts)) as pool:
            responses = list(pool.map(post, range(len(texts))))
        for i, response in enumerate(responses):
            np.testing.assert_allclose(_vectors(response)[0], want[roles[i]][i], atol=ATOL, err_msg=f"request {i}")
        batches = sum(_metric(client, "st_leap_serve_batch_texts_count", role=role) for role in ("query", "document"))
        encoded = sum(_metric(client, "st_leap_serve_batch_texts_sum", role=role) for role in ("query", "document"))
    assert encoded == len(texts)
    assert batches < len(texts)  # at least one batch held several requests


def test_a_full_queue_answers_503_with_retry_after_and_recovers(plain, monkeypatch):
    """With the worker held on one request and the queue (4 texts) full, the next request is refused at once with
    503, Retry-After and an OpenAI-style error; the queue never holds more than its bound, and once the worker goes
    on every accepted request is answered and new ones are taken again."""
    started, release = threading.Event(), threading.Event()
    encode = plain.encode

    def slow(inputs, *args, **kwargs):
        started.set()
        assert release.wait(60)
        return encode(inputs, *args, **kwargs)

    monkeypatch.setattr(plain, "encode", slow)
    with running(plain, max_queue=4, max_texts=4, max_batch_size=4) as (server, client):
        with ThreadPoolExecutor(2) as pool:
            held = pool.submit(client.post, "/v1/embeddings", json={"input": SENTENCES[0]})
            assert started.wait(60)
            queued = pool.submit(client.post, "/v1/embeddings", json={"input": SENTENCES[1:5]})
            _wait_for(lambda: server.queue.depth == 4, "the second request to be queued")
            refused = client.post("/v1/embeddings", json={"input": [SENTENCES[5]]})
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            error = refused.json()["error"]
            assert error["code"] == "queue_full" and error["type"] == "server_error" and "busy" in error["message"]
            health = client.get("/health").json()
            assert health["queue"]["texts"] == 4 and health["queue"]["requests"] == 1
            assert _metric(client, "st_leap_serve_queue_texts") == 4.0
            release.set()
            assert held.result().status_code == 200 and queued.result().status_code == 200
        assert client.post("/v1/embeddings", json={"input": [SENTENCES[5]]}).status_code == 200
        assert _metric(client, "st_leap_serve_requests_total", role="default", status="503") == 1.0
        assert _metric(client, "st_leap_serve_requests_total", role="default", status="200") == 3.0
        assert server.queue.depth == 0


# ---------------------------------------------------------------------------------------------------- bad requests
BAD_REQUESTS = [
    ({"json": {"input": []}}, 400, "empty_input", "empty list"),
    ({"json": {"input": ""}}, 400, "empty_input", "empty string"),
    ({"json": {"input": ["a dog", ""]}}, 400, "empty_input", "input[1] is an empty string"),
    ({"json": {"input": ["the dog"] * 5}}, 400, "too_many_inputs", "at most 4"),
    ({"json": {"input": "the dog " * 10}}, 400, "input_too_long", "at most 50"),
    ({"json": {"input": 42}}, 400, "invalid_type", "a number"),
    ({"json": {"input": {"text": "a dog"}}}, 400, "invalid_type", "an object"),
    ({"json": {"input": [["a dog"]]}}, 400, "invalid_type", "nested lists"),
    ({"json": {"input": ["a dog", None]}}, 400, "invalid_type", "input[1] is null"),
    ({"json": {"input": [101, 2000, 102]}}, 400, "unsupported_input", "token ids"),
    ({"json": {"input": [[101, 2000, 102]]}}, 400, "unsupported_input", "token ids"),
    ({"json": {"model": "tiny"}}, 400, "missing_input", "input is required"),
    (
        {"content": b'{"input": "a dog",', "headers": {"content-type": "application/json"}},
        400,
        "invalid_json",
        "not valid JSON",
    ),
    ({"content": b"\xff\xfe", "headers": {"content-type": "application/json"}}, 400, "invalid_json", "not valid JSON"),
    (  # deeper than the JSON decoder's recursion limit (found by benchmarks.serving.fuzz): a 400, not a 500
        {"content": b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}", "headers": {"content-type": "application/json"}},
        400,
        "invalid_json",
        "too deep",
    ),
    ({"content": b'{"a":' * 5000 + b"1" + b"}" * 5000}, 400, "invalid_json", "too deep"),
    (  # a lone surrogate, escaped in JSON (found by benchmarks.serving.fuzz): a 400, not the tokenizer's 500
        {"content": b'{"input": ["a dog", "ab\\udcffcd"]}', "headers": {"content-type": "application/json"}},
        400,
        "invalid_text",
        "input[1] holds an unpaired surrogate",
    ),
    ({"json": ["a dog"]}, 400, "invalid_json", "JSON object"),
    ({"json": {"input": "a dog", "model": "gpt-4"}}, 404, "model_not_found", "'gpt-4' is not served"),
    ({"json": {"input": "a dog", "model": "tiny:passage"}}, 404, "model_not_found", "not served"),
    ({"json": {"input": "a dog", "model": 3}}, 400, "invalid_type", "model must be a string"),
    ({"json": {"input": "a dog", "input_type": "passage"}}, 400, "invalid_input_type", "'query' or 'document'"),
    (
        {"json": {"input": "a dog", "model": "tiny:query", "input_type": "document"}},
        400,
        "conflicting_roles",
        "send one",
    ),
    ({"json": {"input": "a dog", "encoding_format": "int8"}}, 400, "invalid_encoding_format", "'float' or 'base64'"),
    ({"json": {"input": "a dog", "dimensions": 8}}, 400, "unsupported_dimensions", "32 dimensions"),
    ({"content": b"x" * 70_000, "headers": {"content-type": "application/json"}}, 413, "body_too_large", "at most"),
]


@pytest.fixture(scope="module")
def strict_server(plain):
    with running(plain, max_texts=4, max_chars=50, max_queue=8) as (server, client):
        yield server, client


@pytest.mark.parametrize(("request_kwargs", "status", "code", "message"), BAD_REQUESTS)
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_answering(
    strict_server, request_kwargs, status, code, message
):
    server, client = strict_server
    response = client.post("/v1/embeddings", **request_kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"]
    assert error["type"] == "invalid_request_error" and set(error) == {"message", "type", "param", "code"}
    assert client.post("/v1/embeddings", json={"input": ["a dog"]}).status_code == 200
    assert client.get("/health").json()["status"] == "ok"


def test_unknown_routes_answer_in_the_openai_error_shape(strict_server):
    _, client = strict_server
    response = client.get("/v1/nothing")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert client.get("/v1/embeddings").status_code == 405


def test_an_encode_failure_is_a_500_for_its_request_only_and_the_worker_goes_on(plain, monkeypatch):
    """A failing encode answers 500 with the error in words; batched with a good request, only the failing request
    gets it (the batch is encoded again request by request); the worker keeps serving."""
    encode = plain.encode
    hold = threading.Event()

    def fragile(inputs, *args, **kwargs):
        if hold.is_set():
            hold.clear()
            _wait_for(lambda: server.queue.depth == 2, "the two requests to be queued")
        if any("boom" in text for text in inputs):
            raise RuntimeError("the encoder broke on boom")
        return encode(inputs, *args, **kwargs)

    monkeypatch.setattr(plain, "encode", fragile)
    with running(plain) as (server, client):
        failed = client.post("/v1/embeddings", json={"input": ["a boom"]})
        assert failed.status_code == 500
        error = failed.json()["error"]
        assert error["code"] == "encode_failed" and error["type"] == "server_error"
        assert "RuntimeError: the encoder broke on boom" in error["message"]
        np.testing.assert_allclose(
            _vectors(client.post("/v1/embeddings", json={"input": ["a dog"]})), encode(["a dog"]), atol=ATOL
        )
        hold.set()
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(client.post, "/v1/embeddings", json={"input": ["the cat"]})
            _wait_for(lambda: not hold.is_set(), "the first request to reach the encoder")
            bad = pool.submit(client.post, "/v1/embeddings", json={"input": ["boom boom"]})
            good = pool.submit(client.post, "/v1/embeddings", json={"input": ["the old man"]})
            assert first.result().status_code == 200
            assert bad.result().status_code == 500
            np.testing.assert_allclose(_vectors(good.result()), encode(["the old man"]), atol=ATOL)
        assert client.get("/health").json()["status"] == "ok"
        assert _metric(client, "st_leap_serve_requests_total", role="default", status="500") == 2.0


# -------------------------------------------------------------------------------------------- metrics and health
def test_metrics_and_health_describe_the_server(router):
    """/metrics holds the server's metrics in its own registry (two servers side by side do not collide);
    /health names the model, its roles and routes, the queue, the limits and why there is no monitor."""
    model, _ = router
    with (
        running(model, name="qe", max_texts=8, max_queue=16) as (_, client),
        running(model, name="other") as (_, other),
    ):
        for _ in range(2):
            assert client.post("/v1/embeddings", json={"input": SENTENCES[:2], "model": "qe:query"}).status_code == 200
        assert client.post("/v1/embeddings", json={"input": "a dog", "input_type": "document"}).status_code == 200
        assert client.post("/v1/embeddings", json={"input": []}).status_code == 400
        text = client.get("/metrics").text
        for name in (
            "st_leap_serve_requests_total",
            "st_leap_serve_request_seconds_bucket",
            "st_leap_serve_queue_texts",
            "st_leap_serve_queue_requests",
            "st_leap_serve_batch_texts_bucket",
            "st_leap_serve_texts_total",
        ):
            assert name in text, name
        assert _metric(client, "st_leap_serve_requests_total", role="query", status="200") == 2.0
        assert _metric(client, "st_leap_serve_requests_total", role="document", status="200") == 1.0
        assert _metric(client, "st_leap_serve_requests_total", role="default", status="400") == 1.0
        assert _metric(client, "st_leap_serve_request_seconds_count", role="query") == 2.0
        assert _metric(client, "st_leap_serve_texts_total", role="query") == 4.0
        assert _metric(other, "st_leap_serve_requests_total", role="query", status="200") is None
        assert "st_leap_fallback_active" not in text  # no monitor
        health = client.get("/health")
        assert health.status_code == 200
        state = health.json()
    assert state["status"] == "ok" and state["model"] == "qe"
    assert state["served_names"] == {"qe": "default", "qe:query": "query", "qe:document": "document"}
    assert state["roles"] == ["query", "document", "default"]
    assert set(state["routes"]) == {"query", "document"} and "index model" in state["routes"]["document"]
    assert state["embedding_dimension"] == model.get_embedding_dimension()
    assert state["queue"]["texts"] == 0 and state["queue"]["max_queue_texts"] == 16
    assert state["limits"] == {"max_texts": 8, "max_chars": 8192}
    assert state["monitor"]["enabled"] is False and "no monitoring reference" in state["monitor"]["reason"]


# ----------------------------------------------------------------------------------------------------- monitoring
@pytest.fixture(scope="module")
def calibrated(tiny_bert_dir, tmp_path_factory):
    """A saved model with an exit threshold between its texts' layer-2 cosines and a reference of texts that exit
    at layer 2 in its folder; the texts that exit at layer 2 ("early") and later ("late")."""
    from st_leap.diagnostics import layer_pooled_states
    from tests.test_modules import early_model

    model = early_model(tiny_bert_dir, exit_min_layer=2)
    pool = _texts(120, seed=3)
    pooled = layer_pooled_states(model, pool, show_progress_bar=False)
    cos = [torch.nn.functional.cosine_similarity(pooled[:, layer], pooled[:, layer - 1], dim=-1) for layer in (2, 3)]
    model[0].set_exit_defaults(threshold_between(cos[0], torch.cat(cos), middle=(1 / 3, 2 / 3)), 1, 2, None)
    folder = tmp_path_factory.mktemp("calibrated") / "model"
    model.save(str(folder))
    model = st_leap.load(str(folder), device="cpu")
    layers = st_leap.encode_with_exits(model, pool).exit_layers
    early = [t for t, layer in zip(pool, layers) if layer == 2]
    late = [t for t, layer in zip(pool, layers) if layer > 2]
    n = min(len(early), len(late), 24)
    assert n >= 12, f"the threshold splits the texts {len(early)} / {len(late)}"
    save_references({"default": build_reference(model, early[:n])}, folder)
    return model, folder, early[:n], late[:n]


def test_a_monitored_model_falls_back_to_full_depth_on_live_traffic(calibrated):
    """The reference saved in the model folder is found; live requests feed the monitor; a window of texts that
    stop exiting raises an alert, and the requests that follow are served at full depth; /metrics and /health
    show the alert and the fallback."""
    model, folder, early, late = calibrated
    reference = serving.find_reference(folder)
    assert set(reference) == {"default"}
    options = {"window": len(early), "sample_rate": 1.0, "max_layer_shift": 0.5, "recover_layer_shift": 0.25}
    with running(model, reference=reference, monitor_options=options) as (server, client):
        assert server.monitored_roles == ["default"]
        for start in range(0, len(early), 6):
            got = _vectors(client.post("/v1/embeddings", json={"input": early[start : start + 6]}))
            np.testing.assert_allclose(got, model.encode(early[start : start + 6]), atol=ATOL)  # its own setting
        assert _metric(client, "st_leap_fallback_active", role="default") == 0.0
        assert client.get("/health").json()["monitor"]["roles"]["default"]["alert"] is False
        for start in range(0, len(late), 6):
            assert client.post("/v1/embeddings", json={"input": late[start : start + 6]}).status_code == 200
        assert _metric(client, "st_leap_fallback_active", role="default") == 1.0
        assert _metric(client, "st_leap_alerts_total", role="default") >= 1.0
        assert _metric(client, "st_leap_serve_monitor_alert", role="default") == 1.0
        assert _metric(client, "st_leap_texts_total", role="default") == float(len(early) + len(late))
        monitor = client.get("/health").json()["monitor"]
        assert monitor["enabled"] is True and monitor["roles"]["default"]["fallback_active"] is True
        assert monitor["roles"]["default"]["reference"]["expected_layers"] == 2.0
        assert any(event["kind"] == "fallback" for event in monitor["events"])
        served = _vectors(client.post("/v1/embeddings", json={"input": early[:4]}))
    full = model.encode(early[:4], exit_threshold=None)
    assert np.abs(model.encode(early[:4]) - full).max() > 1e-3  # full depth is not what the model serves itself
    np.testing.assert_allclose(served, full, atol=ATOL)


def test_a_query_encoder_with_a_query_reference_monitors_its_query_route_only(router, tmp_path):
    model, _ = router
    texts = _texts(30, seed=7)
    save_references({"query": build_reference(query_side(model), texts, task="query")}, tmp_path)
    with running(model, reference=str(tmp_path), monitor_options={"sample_rate": 1.0}) as (server, client):
        assert server.monitored_roles == ["query"]
        query = _vectors(client.post("/v1/embeddings", json={"input": texts[:5], "input_type": "query"}))
        document = _vectors(client.post("/v1/embeddings", json={"input": texts[:5], "input_type": "document"}))
        assert _metric(client, "st_leap_texts_total", role="query") == 5.0
        assert _metric(client, "st_leap_texts_total", role="document") is None
        assert set(client.get("/health").json()["monitor"]["roles"]) == {"query"}
    np.testing.assert_allclose(query, model.encode_query(texts[:5]), atol=ATOL)
    np.testing.assert_allclose(document, model.encode_document(texts[:5]), atol=ATOL)


def test_a_reference_of_another_depth_is_refused(router, calibrated):
    model, _ = router
    _, folder, _, _ = calibrated
    references = serving.find_reference(folder)  # a 4-layer reference, for the 2-layer query route
    references["query"] = references.pop("default")
    references["query"].role = "query"
    with pytest.raises(ValueError, match="4 layers and the served encoder 2"):
        EmbeddingServer(model, name="qe", reference=references)


# -------------------------------------------------------------------------------------------------------- exports
def test_exported_folders_are_served_without_a_monitor(router, tmp_path):
    """An export of the query encoder (one graph per route) serves every role like the source model; an export of
    its query route serves only NAME:query and says so for the others; neither can exit, so neither is monitored
    even with a reference."""
    pytest.importorskip("onnxruntime")
    from st_leap.backends import export

    model, _ = router
    texts = SENTENCES[:4]
    exported = st_leap.load(str(export(model, tmp_path / "qe-onnx", "onnx")), device="cpu")
    save_references({"query": build_reference(query_side(model), _texts(20, seed=2), task="query")}, tmp_path / "ref")
    with running(exported, name="qe", reference=str(tmp_path / "ref")) as (server, client):
        assert server.monitor is None and "cannot exit" in server.monitor_reason
        assert client.get("/health").json()["monitor"] == {"enabled": False, "reason": server.monitor_reason}
        query = _vectors(client.post("/v1/embeddings", json={"input": texts, "model": "qe:query"}))
        document = _vectors(client.post("/v1/embeddings", json={"input": texts, "input_type": "document"}))
    np.testing.assert_allclose(query, exported.encode_query(texts), atol=ATOL)
    np.testing.assert_allclose(document, exported.encode_document(texts), atol=ATOL)
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(torch.tensor(query), torch.tensor(model.encode_query(texts))).min() >= 0.999
    assert cosine(torch.tensor(document), torch.tensor(model.encode_document(texts))).min() >= 0.999

    only_query = st_leap.load(str(export(model, tmp_path / "q-onnx", "onnx", role="query")), device="cpu")
    with running(only_query, name="qe") as (server, client):
        assert server.names == {"qe:query": "query"}
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["qe:query"]
        got = _vectors(client.post("/v1/embeddings", json={"input": texts, "model": "qe:query"}))
        np.testing.assert_allclose(got, only_query.encode_query(texts), atol=ATOL)
        for body, status in [
            ({"model": "qe"}, 400),
            ({"model": "qe", "input_type": "document"}, 400),
            ({"model": "qe:document"}, 404),
        ]:
            response = client.post("/v1/embeddings", json={"input": texts, **body})
            assert response.status_code == status, body
            assert "qe:query" in response.json()["error"]["message"]
        assert (
            client.post("/v1/embeddings", json={"input": texts, "model": "qe", "input_type": "query"}).status_code
            == 200
        )


# ------------------------------------------------------------------------------------------------- the lean path
LEAN_ATOL = 1e-6


@pytest.fixture(scope="module")
def exported_plain(tiny_bert_dir, tmp_path_factory):
    """Whole-graph ONNX exports of a tiny st_leap model with a query prompt, in fp32 and int8."""
    pytest.importorskip("onnxruntime")
    from st_leap.backends import export

    model = st_leap.from_pretrained(tiny_bert_dir, device="cpu")
    model.prompts = {"query": "the ", "document": ""}
    root = tmp_path_factory.mktemp("lean")
    return {
        quantize or "fp32": st_leap.load(str(export(model, root / (quantize or "fp32"), "onnx", quantize=quantize)))
        for quantize in (None, "int8")
    }


@pytest.mark.parametrize("quantize", ["fp32", "int8"])
def test_lean_encode_gives_encode_querys_embeddings(exported_plain, quantize):
    """tokenizer -> one graph call gives what encode_query gives through SentenceTransformer.encode: one text at a
    time, a batch, and more texts than a batch (cut as encode cuts them, so the int8 graph's per-batch activation
    scales see the same batches); the prompt is prepended as encode_query prepends it."""
    model = exported_plain[quantize]
    module = serving.lean_module(model, "query")
    assert module is not None and serving.role_prompt(model, "query") == "the "
    texts = [text.upper() for text in _texts(11, seed=5)] + SENTENCES
    for text in texts[:4]:
        got = serving.lean_encode(module, [text], prompt="the ")
        assert got.dtype == np.float32 and got.shape == (1, model.get_embedding_dimension())
        assert np.abs(got - model.encode_query([text])).max() <= LEAN_ATOL
    whole = serving.lean_encode(module, texts, "the ")
    assert np.abs(whole - model.encode_query(texts, batch_size=64)).max() <= LEAN_ATOL
    chunked = serving.lean_encode(module, texts, "the ", batch_size=4)
    assert np.abs(chunked - model.encode_query(texts, batch_size=4)).max() <= LEAN_ATOL
    assert np.abs(serving.lean_encode(module, texts) - model.encode(texts, batch_size=64)).max() <= LEAN_ATOL
    without = serving.lean_encode(module, texts[:3])
    assert np.abs(without - serving.lean_encode(module, texts[:3], "the ")).max() > 1e-3  # the prompt counts
    assert serving.lean_encode(module, []).shape == (0, model.get_embedding_dimension())


def test_the_server_encodes_exported_routes_on_the_lean_path(exported_plain, monkeypatch):
    """An exported folder's roles are served through lean_encode: one graph call per batch, encode_query never
    called, the same embeddings (and token counts) as the server without the lean path."""
    model = exported_plain["int8"]
    module = serving.lean_module(model, "query")
    texts = SENTENCES[:6]
    want = model.encode_query(texts)
    with running(model, lean=False) as (server, client):
        assert server.lean_roles == [] and client.get("/health").json()["lean_roles"] == []
        before = client.post("/v1/embeddings", json={"input": texts, "input_type": "query"})
    calls = []
    runner = module.runner
    monkeypatch.setattr(module, "runner", lambda *arrays: calls.append(arrays[0].shape) or runner(*arrays))

    def refuse(*args, **kwargs):
        raise AssertionError("the lean path must not call encode")

    for method in ("encode", "encode_query", "encode_document"):
        monkeypatch.setattr(model, method, refuse)
    with running(model) as (server, client):
        assert server.lean_roles == ["query", "document", "default"]
        assert client.get("/health").json()["lean_roles"] == ["query", "document", "default"]
        after = client.post("/v1/embeddings", json={"input": texts, "input_type": "query"})
        plain_role = _vectors(client.post("/v1/embeddings", json={"input": texts[:2]}))
    assert np.abs(_vectors(after) - want).max() <= LEAN_ATOL
    assert np.abs(_vectors(after) - _vectors(before)).max() <= LEAN_ATOL
    assert after.json()["usage"] == before.json()["usage"]
    assert calls[0][0] == len(texts) and len(calls) == 2  # one call per batch
    assert plain_role.shape == (2, model.get_embedding_dimension())


def test_an_exported_query_encoder_is_lean_on_each_route(router, tmp_path):
    """A query encoder exported one graph per route: each role's route is one graph, served lean, with the
    Router's own encode_query / encode_document embeddings; a torch model or a model with truncate_dim is not."""
    pytest.importorskip("onnxruntime")
    from st_leap.backends import export

    model, _ = router
    exported = st_leap.load(str(export(model, tmp_path / "qe-int8", "onnx", quantize="int8")), device="cpu")
    texts = SENTENCES
    with running(exported, name="qe") as (server, client):
        assert server.lean_roles == ["query", "document", "default"]
        query = _vectors(client.post("/v1/embeddings", json={"input": texts, "model": "qe:query"}))
        document = _vectors(client.post("/v1/embeddings", json={"input": texts, "model": "qe:document"}))
    assert np.abs(query - exported.encode_query(texts)).max() <= LEAN_ATOL
    assert np.abs(document - exported.encode_document(texts)).max() <= LEAN_ATOL
    assert np.abs(query - document).max() > 1e-2  # two graphs: a swapped route would show
    assert serving.lean_module(model, "query") is None  # torch
    exported.truncate_dim = 8
    try:
        assert serving.lean_module(exported, "query") is None
    finally:
        exported.truncate_dim = None


# ----------------------------------------------------------------------------------------------- command and setup
def test_cli_serve_loads_the_model_finds_its_reference_and_binds_locally(calibrated, monkeypatch, capsys):
    """`st-leap serve DIR` builds the server (the reference in DIR found, the limits and threads passed) and runs
    it on 127.0.0.1 by default; the app it would serve answers."""
    _, folder, early, _ = calibrated
    seen = {}

    def fake_serve(server, host, port):
        seen.update(server=server, host=host, port=port)
        with TestClient(create_app(server)) as client:
            seen["status"] = client.post("/v1/embeddings", json={"input": early[:2], "model": "cal"}).status_code

    monkeypatch.setattr(serving, "serve", fake_serve)
    threads = torch.get_num_threads()
    try:
        code = main(
            [
                "serve",
                str(folder),
                "--name",
                "cal",
                "--max-batch-size",
                "8",
                "--max-queue",
                "64",
                "--max-texts",
                "16",
                "--threads",
                "1",
                "--sample-rate",
                "1",
                "--window",
                "7",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0 and seen["status"] == 200
    server = seen["server"]
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8080)
    assert server.names == {"cal": "default", "cal:query": "query", "cal:document": "document"}
    assert server.queue.max_batch_size == 8 and server.queue.max_queue == 64 and server.max_texts == 16
    assert server.monitored_roles == ["default"] and server.monitor.window == 7 and server.monitor.sample_rate == 1.0
    assert "monitored roles: default" in capsys.readouterr().out

    monkeypatch.setattr(serving, "serve", lambda server, host, port: seen.update(server=server))
    assert main(["serve", str(folder), "--no-monitor"]) == 0
    seen["server"].close()
    assert seen["server"].monitor is None and seen["server"].name == "model"
    assert "no monitor: monitoring is turned off" in capsys.readouterr().out


def test_cli_serve_checks_its_arguments_before_loading_a_model(tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")
    assert main(["serve", missing, "--max-texts", "10", "--max-queue", "5"]) == 2
    assert "--max-texts (10) must be at most --max-queue (5)" in capsys.readouterr().err
    for argv, message in [
        (["serve", missing, "--port", "70000"], "port number"),
        (["serve", missing, "--max-wait-ms", "-1"], "milliseconds >= 0"),
        (["serve", missing, "--max-batch-size", "0"], "whole number >= 1"),
        (["serve", missing, "--sample-rate", "2"], "[0, 1]"),
    ]:
        with pytest.raises(SystemExit) as error:
            main(argv)
        assert error.value.code == 2
        assert message in capsys.readouterr().err


def test_server_arguments_are_checked(plain):
    for kwargs, message in [
        ({"max_texts": 10, "max_queue": 5}, "could never be queued"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_wait_ms": -1.0}, "max_wait_ms"),
        ({"name": "tiny:query"}, "served name"),
    ]:
        with pytest.raises(ValueError, match=message):
            EmbeddingServer(plain, **{"name": "tiny", **kwargs})


def test_serving_imports_fastapi_only_to_build_an_app_and_names_the_extra_without_it(plain, monkeypatch):
    code = "import sys, st_leap, st_leap.serving; print('fastapi' in sys.modules, 'uvicorn' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    assert out.split() == ["False", "False"]
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(ImportError, match=r'pip install "st-leap\[serve\]"'):
        EmbeddingServer(plain, name="tiny")
    assert main(["serve", "minilm"]) == 2  # the command says the same before loading anything
