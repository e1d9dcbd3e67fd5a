from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers.sentence_transformer.evaluation import (
    EmbeddingSimilarityEvaluator,
    InformationRetrievalEvaluator,
)

from st_leap.evaluation import EarlyExitEmbeddingSimilarityEvaluator, EarlyExitInformationRetrievalEvaluator
from st_leap.evaluation.beir import load_beir_folder


def test_similarity_evaluator_full_depth_matches_stock(eval_model, sts_pairs):
    """exit_threshold=None gives exactly the stock evaluator's metrics, plus E[layers] = L and exit rate 0."""
    s1, s2, scores = sts_pairs
    ours = EarlyExitEmbeddingSimilarityEvaluator(s1, s2, scores, exit_threshold=None, name="sts")(eval_model)
    stock = EmbeddingSimilarityEvaluator(s1, s2, scores, name="sts")(eval_model)
    for key, value in stock.items():
        assert ours[key] == pytest.approx(value, abs=1e-9)
    assert ours["sts_expected_layers"] == eval_model[0].num_layers
    assert ours["sts_exit_rate"] == 0.0
    assert ours["sts_layer_reduction"] == 1.0


def test_similarity_evaluator_passes_exit_kwargs(eval_model, sts_pairs):
    """The metrics equal those computed from encode(..., exit_threshold=theta), and E[layers] counts both sides."""
    s1, s2, scores = sts_pairs
    evaluator = EarlyExitEmbeddingSimilarityEvaluator(
        s1, s2, scores, exit_threshold=0.93, exit_min_layer=2, name="sts"
    )
    metrics = evaluator(eval_model)
    assert evaluator.primary_metric == "sts_spearman_cosine"
    from scipy.stats import spearmanr

    a = eval_model.encode(s1, exit_threshold=0.93, exit_min_layer=2)
    b = eval_model.encode(s2, exit_threshold=0.93, exit_min_layer=2)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert metrics["sts_spearman_cosine"] == pytest.approx(spearmanr(scores, cos).statistic, abs=1e-6)
    layers = [
        o["exit_layer"].item()
        for o in eval_model.encode(s1 + s2, exit_threshold=0.93, exit_min_layer=2, output_value=None)
    ]
    assert evaluator.exit_stats["num_samples"] == len(s1) + len(s2)
    assert metrics["sts_expected_layers"] == pytest.approx(np.mean(layers))
    assert 0 < metrics["sts_exit_rate"] < 1


def test_similarity_evaluator_uses_model_default_when_omitted(eval_model, sts_pairs):
    """Without exit kwargs the module's saved default threshold applies (nothing is forced to full depth)."""
    s1, s2, scores = sts_pairs
    explicit = EarlyExitEmbeddingSimilarityEvaluator(s1, s2, scores, exit_threshold=0.9)(eval_model)
    eval_model[0].exit_threshold = 0.9
    implicit = EarlyExitEmbeddingSimilarityEvaluator(s1, s2, scores)(eval_model)
    assert implicit == pytest.approx(explicit)
    assert implicit["expected_layers"] < eval_model[0].num_layers


def test_ir_evaluator_full_depth_matches_stock(eval_model, tiny_beir_dir):
    """The IR evaluator at full depth reproduces the stock metrics and adds the exit statistics."""
    corpus, queries, qrels = load_beir_folder(tiny_beir_dir)
    corpus_text = {cid: doc["text"] for cid, doc in corpus.items()}
    relevant = {qid: set(docs) for qid, docs in qrels.items()}
    ours = EarlyExitInformationRetrievalEvaluator(queries, corpus_text, relevant, exit_threshold=None, name="ir")(
        eval_model
    )
    stock = InformationRetrievalEvaluator(queries, corpus_text, relevant, name="ir")(eval_model)
    for key, value in stock.items():
        assert ours[key] == pytest.approx(value)
    assert ours["ir_expected_layers"] == eval_model[0].num_layers


def test_ir_evaluator_counts_queries_and_corpus(eval_model, tiny_beir_dir):
    """With a threshold, E[layers] covers every encoded query and document, and get_config_dict names the setting."""
    corpus, queries, qrels = load_beir_folder(tiny_beir_dir)
    corpus_text = {cid: doc["text"] for cid, doc in corpus.items()}
    evaluator = EarlyExitInformationRetrievalEvaluator(
        queries, corpus_text, {q: set(d) for q, d in qrels.items()}, exit_threshold=0.9, exit_min_layer=2
    )
    metrics = evaluator(eval_model)
    assert evaluator.exit_stats["num_samples"] == len(qrels) + len(corpus)
    assert metrics["expected_layers"] == pytest.approx(2.0)
    assert metrics["exit_rate"] == 1.0
    assert evaluator.get_config_dict()["exit_threshold"] == 0.9
