"""st_leap.monitoring: exit monitoring, drift alerts and fallback to full depth, on a tiny random BERT
(initializer_range 0.5, 4 layers, l_min 2).

The exit threshold sits in the widest gap between the texts' layer-2 cosines, so every text exits at layer 2
("early") or later ("late") whatever the batch; a stream of late texts after a reference of early texts is a
change of distribution whose mean exit layer moves by at least one layer."""

from __future__ import annotations

import json
import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import st_leap
from st_leap.cli import main
from st_leap.diagnostics import layer_pooled_states
from st_leap.monitoring import ExitMonitor, build_reference, load_references, save_references
from tests.conftest import WORDS, threshold_between
from tests.test_modules import early_model


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return list(dict.fromkeys(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)))


@pytest.fixture(scope="module")
def served(tiny_bert_dir):
    """The model with theta as its default, the texts, and ``n`` early and ``n`` late ones."""
    model = early_model(tiny_bert_dir, exit_min_layer=2)
    pool = _sentences(120, seed=3)
    pooled = layer_pooled_states(model, pool, show_progress_bar=False)
    cos = [torch.nn.functional.cosine_similarity(pooled[:, layer], pooled[:, layer - 1], dim=-1) for layer in (2, 3)]
    theta = threshold_between(cos[0], torch.cat(cos), middle=(1 / 3, 2 / 3))  # no text's cosine is near theta
    model[0].set_exit_defaults(theta, 1, 2, None)
    layers = st_leap.encode_with_exits(model, pool).exit_layers
    early = [t for t, layer in zip(pool, layers) if layer == 2]
    late = [t for t, layer in zip(pool, layers) if layer > 2]
    n = min(len(early), len(late), 24)
    assert n >= 12, f"the threshold splits the texts {len(early)} / {len(late)}"
    return SimpleNamespace(model=model, pool=pool, early=early[:n], late=late[:n], n=n)


def _feed(monitor: ExitMonitor, texts: list[str], request_size: int = 5, task: str | None = None) -> None:
    for start in range(0, len(texts), request_size):
        monitor.encode(texts[start : start + request_size], task=task)


def _switching_monitor(served, **kwargs) -> ExitMonitor:
    reference = build_reference(served.model, served.early)
    assert reference.expected_layers == 2.0 and reference.exit_rate == 1.0
    settings = dict(window=served.n, sample_rate=1.0, max_layer_shift=0.5, recover_layer_shift=0.25)
    return ExitMonitor(served.model, reference, **{**settings, **kwargs})


def test_reference_measures_the_served_setting_and_round_trips(served, tmp_path):
    """build_reference keeps a seeded sample of distinct texts, their exit histogram at the served setting and their
    full-depth embeddings; save_references / load_references give it back."""
    texts = served.pool + served.pool[:5]  # duplicates are kept once
    reference = build_reference(served.model, texts, max_texts=30, seed=1, nn_k=5)
    assert len(reference.texts) == 30 == len(set(reference.texts)) == sum(reference.counts)
    again = st_leap.encode_with_exits(served.model, reference.texts)
    assert reference.counts == again.stats.counts and reference.num_layers == 4
    full = st_leap.encode_with_exits(served.model, reference.texts, exit_threshold=None).embeddings
    np.testing.assert_allclose(reference.embeddings, full, atol=1e-5)
    assert 0.0 <= reference.nn_overlap <= 1.0 and reference.nn_k == 5
    assert reference.setting["exit_threshold"] == served.model[0].exit_threshold
    assert build_reference(served.model, texts, max_texts=30, seed=1).texts == reference.texts
    save_references({"default": reference}, tmp_path)
    loaded = load_references(tmp_path)["default"]
    assert (loaded.texts, loaded.counts, loaded.nn_k) == (reference.texts, reference.counts, 5)
    np.testing.assert_allclose(loaded.embeddings, reference.embeddings)
    assert loaded.nn_overlap == pytest.approx(reference.nn_overlap)
    with pytest.raises(FileNotFoundError, match="no monitoring reference"):
        load_references(tmp_path / "elsewhere")


def test_exit_monitor_alerts_within_one_window_and_falls_back_to_full_depth(served, caplog):
    """Two windows like the reference raise nothing; the first window of the switched stream raises a mean exit
    layer alert, logged and passed to the callbacks, and the role then serves full depth."""
    seen = []
    monitor = _switching_monitor(served, on_event=seen.append)
    _feed(monitor, served.early * 2)
    assert monitor.events == [] and not monitor.fallback_active()
    assert [w["expected_layers"] for w in monitor.windows] == [2.0, 2.0]
    with caplog.at_level(logging.WARNING, logger="st_leap.monitoring"):
        _feed(monitor, served.late)
    windows = monitor.windows
    assert len(windows) == 3 and windows[2]["expected_layers"] >= 3.0
    assert "mean_exit_layer" in windows[2]["alert"] and windows[2]["fallback"] is True
    kinds = [(e.kind, e.signal) for e in monitor.events]
    assert ("alert", "mean_exit_layer") in kinds and [k for k, _ in kinds].count("fallback") == 1
    assert all(e.window == 2 and e.role == "default" for e in monitor.events)
    assert seen == monitor.events
    assert "mean exit layer" in caplog.text
    assert monitor.fallback_active()
    out = monitor.encode(served.late[:6])
    assert out.exit_layers.tolist() == [4] * 6
    full = served.model.encode(served.late[:6], exit_threshold=None)
    np.testing.assert_allclose(out.embeddings, full, atol=1e-5)
    snapshot = json.loads(json.dumps(monitor.snapshot(), allow_nan=False))
    role = snapshot["roles"]["default"]
    assert role["fallback_active"] is True and role["alerts"] >= 1 and role["fallbacks"] == 1
    assert role["reference"]["expected_layers"] == 2.0 and snapshot["events"][0]["kind"] == "alert"


def test_exit_monitor_recovers_only_after_consecutive_windows_in_band(served):
    """Hysteresis: while falling back, the role's own setting is measured on the sampled texts; a bad window resets
    the count, and the role returns to its own setting only after recover_windows good windows in a row."""
    monitor = _switching_monitor(served, recover_windows=3)
    _feed(monitor, served.late)
    assert monitor.fallback_active()
    states = []
    for texts in (served.early, served.early, served.late, served.early, served.early, served.early):
        _feed(monitor, texts)
        states.append(monitor.fallback_active())
    assert states == [True, True, True, True, True, False]
    windows = monitor.windows
    assert windows[1]["expected_layers"] == 2.0 and windows[1]["fallback"] is True  # measured at theta, not served
    assert windows[3]["expected_layers"] >= 3.0
    kinds = [e.kind for e in monitor.events]
    assert [k for k in kinds if k != "alert"] == ["fallback", "recovered"]
    assert all(e.window == 0 for e in monitor.events if e.kind == "alert")  # no new alert while falling back
    assert monitor.events[-1].window == 6
    assert monitor.encode(served.early[:4]).exit_layers.tolist() == [2] * 4


def test_exit_monitor_raises_nothing_on_an_unchanged_stream(served):
    """Ten windows of the reference's own texts, reordered and cut into other requests: no alert with the paper's
    bands, and each window's signals are the calibrated ones."""
    reference = build_reference(served.model, served.pool)
    monitor = ExitMonitor(served.model, reference, window=len(reference.texts), sample_rate=1.0)
    for round_ in range(10):
        texts = list(reference.texts)
        random.Random(round_).shuffle(texts)
        _feed(monitor, texts, request_size=16)
    windows = monitor.windows
    assert len(windows) == 10 and monitor.events == []
    for window in windows:
        assert window["expected_layers"] == pytest.approx(reference.expected_layers, abs=0.05)
        assert window["nn_overlap"] == pytest.approx(reference.nn_overlap, abs=0.05)
        assert window["cosine"] == pytest.approx(reference.cosine, abs=0.01)
        assert window["alert"] == [] and window["fallback"] is False


def test_exit_monitor_counts_add_up_across_threads(served):
    """Four threads encoding through one monitor (two roles): every text, request and sample is counted once."""
    reference = build_reference(served.model, served.pool, role="all")
    monitor = ExitMonitor(served.model, {"all": reference}, window=10, sample_rate=1.0, fallback=None)
    barrier = threading.Barrier(4)

    def worker(index: int) -> None:
        barrier.wait()
        for call in range(5):
            start = (6 * (5 * index + call)) % (len(served.pool) - 6)
            monitor.encode(served.pool[start : start + 6], task="query" if index < 2 else None)

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(worker, i) for i in range(4)]:
            future.result()
    snapshot = monitor.snapshot()
    assert set(snapshot["roles"]) == {"query", "default"}
    for role, state in snapshot["roles"].items():
        assert (state["requests"], state["texts"], state["samples"], state["windows"]) == (10, 60, 60, 6), role
        assert state["rolling"]["num_texts"] == 10 and sum(state["rolling"]["counts"]) == 10
        assert sum(w["num_texts"] for w in snapshot["windows"] if w["role"] == role) == 60
        assert state["alerts"] == sum(e["kind"] == "alert" and e["role"] == role for e in snapshot["events"])


def test_exit_monitor_prometheus_metrics(served):
    """With a registry every metric is named st_leap_*, carries the role label and matches the snapshot."""
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    reference = build_reference(served.model, served.pool)
    monitor = ExitMonitor(served.model, {"query": reference}, window=4, sample_rate=1.0, registry=registry, fallback=None)
    monitor.encode(served.early[:4] + served.late[:4], task="query")

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"role": "query", **labels})

    state = monitor.snapshot()["roles"]["query"]
    assert value("st_leap_requests_total") == 1.0
    assert value("st_leap_texts_total") == 8.0 and value("st_leap_samples_total") == 8.0
    assert value("st_leap_alerts_total") == float(state["alerts"]) and value("st_leap_fallbacks_total") == 0.0
    assert value("st_leap_exit_layer_count") == 8.0 and value("st_leap_exit_layer_bucket", le="+Inf") == 8.0
    assert value("st_leap_exit_layer_bucket", le="1.0") == 0.0  # l_min is 2
    assert value("st_leap_exit_layer_bucket", le="2.0") == 4.0  # the four early texts
    assert value("st_leap_mean_exit_layer") == pytest.approx(state["rolling"]["expected_layers"])
    assert value("st_leap_exit_rate") == pytest.approx(state["rolling"]["exit_rate"])
    assert value("st_leap_nn_overlap") == pytest.approx(state["rolling"]["nn_overlap"])
    assert value("st_leap_fallback_active") == 0.0
    samples = [s for family in registry.collect() for s in family.samples]
    names = {s.name for s in samples}
    assert {
        "st_leap_requests_total", "st_leap_samples_total", "st_leap_alerts_total", "st_leap_fallbacks_total",
        "st_leap_mean_exit_layer", "st_leap_exit_rate", "st_leap_nn_overlap", "st_leap_fallback_active",
        "st_leap_exit_layer_bucket",
    } <= names
    assert all(s.name.startswith("st_leap_") and s.labels.get("role") == "query" for s in samples)


def test_exit_monitor_snapshot_is_json_before_and_after_traffic(served):
    """snapshot() is plain JSON (no NaN) with no traffic yet, and after it."""
    monitor = ExitMonitor(served.model, build_reference(served.model, served.pool), window=8, sample_rate=0.5)
    assert json.loads(json.dumps(monitor.snapshot(), allow_nan=False))["roles"] == {}
    monitor.encode(served.pool[:3], task="document")
    state = json.loads(json.dumps(monitor.snapshot(), allow_nan=False))["roles"]["document"]
    assert state["texts"] == 3 and state["windows"] == 0 and state["rolling"]["num_texts"] == 3


def test_exit_monitor_leaves_encode_unchanged(served):
    """The monitor wraps encode and changes nothing in the model: its embeddings are plain encode's, and plain
    encode gives the same as before it existed."""
    texts = served.pool[:10]
    before = served.model.encode(texts)
    modules = [type(m) for m in served.model]
    monitor = ExitMonitor(served.model, build_reference(served.model, served.pool), sample_rate=1.0)
    result = monitor.encode(texts)
    np.testing.assert_allclose(result.embeddings, before, atol=1e-5)
    assert result.exit_layers.tolist() == st_leap.encode_with_exits(served.model, texts).exit_layers.tolist()
    np.testing.assert_array_equal(served.model.encode(texts), before)
    assert [type(m) for m in served.model] == modules


def test_exit_monitor_rejects_bad_settings(served):
    with pytest.raises(ValueError, match="recover_layer_shift"):
        ExitMonitor(served.model, max_layer_shift=1.0, recover_layer_shift=2.0)
    with pytest.raises(ValueError, match="sample_rate"):
        ExitMonitor(served.model, sample_rate=1.5)
    with pytest.raises(ValueError, match="fallback"):
        ExitMonitor(served.model, fallback={"threshold": 0.9})
    with pytest.raises(ValueError, match="exit_threshold"):
        ExitMonitor(served.model, fallback={"exit_threshold": 1.5})


def test_cli_monitor_replays_a_distribution_switch(served, tmp_path, capsys):
    """`st-leap monitor MODEL --stream a.txt --stream b.jsonl` prints a line per window, alerts in the first window
    of the second stream and falls back; writes monitor.json and monitor.png. Without a reference it stops with a
    message."""
    folder = tmp_path / "model"
    served.model.save(str(folder))
    plain = tmp_path / "plain"
    served.model.save(str(plain))
    save_references({"default": build_reference(served.model, served.early)}, folder)
    a = tmp_path / "a.txt"
    a.write_text("\n".join(served.early * 2) + "\n", encoding="utf-8")
    b = tmp_path / "b.jsonl"
    b.write_text("\n".join(json.dumps({"_id": str(i), "text": t}) for i, t in enumerate(served.late)) + "\n")
    out = tmp_path / "out"
    code = main(["monitor", str(folder), "--stream", str(a), "--stream", str(b), "--window", str(served.n),
                 "--sample-rate", "1", "--request-size", "5", "--max-layer-shift", "0.5", "--recover-layer-shift",
                 "0.25", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "E[layers]" in printed and "fallback:" in printed
    result = json.loads((out / "monitor.json").read_text())
    windows = result["windows"]
    assert [w["stream"] for w in windows] == [str(a), str(a), str(b)]
    assert windows[0]["alert"] == [] and windows[1]["alert"] == []
    assert "mean_exit_layer" in windows[2]["alert"] and windows[2]["fallback"] is True
    assert result["reference"]["expected_layers"] == 2.0
    assert "fallback" in [e["kind"] for e in result["events"]]
    assert (out / "monitor.png").stat().st_size > 1000
    assert main(["monitor", str(plain), "--stream", str(a), "--out", str(out)]) == 2
    assert "no monitoring reference" in capsys.readouterr().err
