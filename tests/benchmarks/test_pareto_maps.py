"""The equal-speed comparison with exit maps scores exactly what ``encode`` serves, from one pass per text set."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import st_leap
from benchmarks.pareto import maps as bench
from st_leap.exit_maps import fit_exit_maps
from tests.conftest import VOCAB, build_tiny_model_dir, threshold_between


@pytest.fixture(scope="module")
def mapped_model(tmp_path_factory):
    path = build_tiny_model_dir(tmp_path_factory.mktemp("pareto_maps"), "bert", num_layers=4)
    model = st_leap.from_pretrained(path, device="cpu")
    rng = random.Random(0)
    texts = [" ".join(rng.choice(VOCAB[5:]) for _ in range(rng.randint(2, 9))) for _ in range(300)]
    fit_exit_maps(model, texts, show_progress_bar=False)
    return model, texts[:40]


def test_every_setting_is_what_encode_serves(mapped_model, monkeypatch):
    """Static cuts equal ``encode(truncate_layers=d)``; each exit setting equals ``encode(exit_threshold=theta)``
    row by row (mixed exit layers through their maps); the oracle stops at the first layer within tau of the final
    embedding."""
    from st_leap.diagnostics import layer_pooled_states

    model, texts = mapped_model
    pooled = layer_pooled_states(model, texts, show_progress_bar=False)
    read = [F.cosine_similarity(pooled[:, layer], pooled[:, layer - 1], dim=-1) for layer in (2, 3)]  # what the rule reads
    # thresholds that this random tiny model crosses for some texts and not others, none of them sitting on a text's
    # own cosine (the benchmark's batches and encode's may differ by numeric noise)
    thetas = tuple(threshold_between(read[0], torch.cat(read), middle=m) for m in ((0.2, 0.4), (0.6, 0.8)))
    monkeypatch.setattr(bench, "THETAS", thetas)
    settings = bench.settings_of(model, texts, min_layer=2)
    for d in range(1, 5):
        served = model.encode(texts, truncate_layers=d, exit_threshold=None, convert_to_tensor=True)
        np.testing.assert_allclose(settings[f"static {d}"]["embeddings"], F.normalize(served, dim=-1), atol=2e-5)
    mixed = 0
    for theta in bench.THETAS:
        served = model.encode(texts, exit_threshold=theta, exit_min_layer=2, exit_patience=1, convert_to_tensor=True)
        np.testing.assert_allclose(settings[f"exit {theta}"]["embeddings"], F.normalize(served, dim=-1), atol=2e-5)
        mixed += len(set(settings[f"exit {theta}"]["layers"].tolist())) > 1
    assert mixed  # some threshold mixes exit layers in one batch
    final = settings["static 4"]["embeddings"]
    for tau in bench.TAUS:
        layers = settings[f"oracle {tau}"]["layers"]
        for i, layer in enumerate(layers):
            cos = [float(settings[f"static {d}"]["embeddings"][i] @ final[i]) for d in range(1, 5)]
            assert layer == next((d for d in range(1, 5) if cos[d - 1] >= tau), 4)


def test_static_curve_and_verdict():
    assert bench.static_at([(1.0, 80.0), (2.0, 60.0)], 1.5) == pytest.approx(70.0)
    assert bench.static_at([(1.0, 80.0), (2.0, 60.0)], 2.5) is None
    block = {"static 1": {"family": "static", "quality": 50.0, "mean_layers": 1.0},
             "static 2": {"family": "static", "quality": 70.0, "mean_layers": 2.0},
             "exit 0.9": {"family": "exit", "quality": 65.0, "mean_layers": 1.5},
             "oracle 0.9": {"family": "oracle", "quality": 66.0, "mean_layers": 1.5}}
    cell = {"speedup": {"static 1": 2.0, "static 2": 1.0, "exit 0.9": 1.5},
            "speedup_band": {"exit 0.9": [1.4, 1.6]}}
    (row,) = bench.compare(block, cell, num_layers=2)
    assert row["static_quality_at_speedup"] == pytest.approx(60.0) and row["beats_static"] is True
    # judged at the low end of its band, where the static curve is higher: 62 < 65 still wins, 66 would not
    assert row["static_quality_at_speedup_low"] == pytest.approx(62.0)
    noisy = {**cell, "speedup_band": {"exit 0.9": [1.05, 1.6]}}  # static at 1.05x: 69 > 65
    assert bench.compare(block, noisy, num_layers=2)[0]["beats_static"] is False
    full = {**block, "exit 0.9": {**block["exit 0.9"], "mean_layers": 1.95}}  # runs full depth: no exit to credit
    assert bench.compare(full, cell, num_layers=2)[0]["beats_static"] is False
    assert bench.oracle_gap(block) == pytest.approx(6.0)


def test_fixed_query_embeddings_score_as_encoded_ones(mapped_model, tmp_path, monkeypatch):
    """NDCG from given query embeddings equals the evaluator's own encode of those queries."""
    from benchmarks.query import run as query_run
    from st_leap.evaluation import QueryDepthEvaluator

    model, texts = mapped_model
    corpus = {f"d{i}": t for i, t in enumerate(texts[10:30])}
    queries = {f"q{i}": texts[i] for i in range(10)}
    relevant = {f"q{i}": {f"d{(3 * i) % 20}"} for i in range(10)}
    reference = st_leap.from_pretrained(model[0].auto_model.name_or_path, device="cpu")
    evaluator = QueryDepthEvaluator(queries, corpus, relevant, reference=reference, depths=[2])
    embeddings = model.encode_query(evaluator.ir.queries, truncate_layers=2, exit_threshold=None,
                                    convert_to_tensor=True)
    assert bench.fixed_query_ndcg(evaluator, embeddings) == pytest.approx(
        evaluator.ndcg(model, truncate_layers=2, exit_threshold=None))
    assert "embed_inputs" not in vars(evaluator.ir)  # the evaluator is left as it was
    # the index cache: a second call reads the file instead of running the model
    monkeypatch.setattr(query_run, "INDEX_CACHE", tmp_path / "index")
    first = query_run.index_embeddings(reference, list(corpus.values()))
    assert len(list((tmp_path / "index").glob("*.npy"))) == 1
    monkeypatch.setattr(reference, "encode_document", None)  # calling it would fail
    np.testing.assert_array_equal(query_run.index_embeddings(reference, list(corpus.values())), first)


def test_stsb_scores_cover_every_setting(mapped_model, monkeypatch):
    """STS-B scoring runs every static depth, exit threshold and oracle tau, with the mean exit layer of each."""
    from st_leap import resources

    model, texts = mapped_model
    s1, s2 = texts[:20], texts[20:40]
    gold = [float(i % 5) for i in range(20)]
    monkeypatch.setattr(resources, "load_stsb", lambda split: (s1, s2, gold))
    scores = bench.stsb_scores(model, min_layer=2)
    assert {v["family"] for v in scores.values()} == {"static", "exit", "oracle"}
    assert len(scores) == 4 + len(bench.THETAS) + len(bench.TAUS)
    assert scores["static 2"]["mean_layers"] == 2.0 and -100 <= scores["static 2"]["quality"] <= 100
    assert all(1.0 <= v["mean_layers"] <= 4.0 for v in scores.values())
