"""TeacherAgreementEvaluator: the retrieval-free dev signal (cosine to the index's model) at an exit setting."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from st_leap.evaluation import TeacherAgreementEvaluator
from st_leap.evaluation.sweep import replay_exits, replay_pooled_states
from tests.evaluation.conftest import random_sentences


def test_agreement_is_one_at_full_depth_and_matches_the_exit_embeddings(eval_model, eval_model_dir):
    texts = random_sentences(48, seed=5)
    reference = SentenceTransformer(eval_model_dir, device="cpu")
    full = TeacherAgreementEvaluator(texts, reference=reference, exit_threshold=None, name="dev")(eval_model)
    assert full["dev_cosine_mean"] == pytest.approx(1.0, abs=1e-5) and full["dev_exit_rate"] == 0.0
    assert full["dev_expected_layers"] == eval_model[0].num_layers

    evaluator = TeacherAgreementEvaluator(texts, reference.encode(texts), exit_threshold=0.93, exit_min_layer=2, name="dev")
    metrics = evaluator(eval_model)
    assert evaluator.primary_metric == "dev_cosine_mean" and set(metrics) == {
        "dev_cosine_mean", "dev_cosine_p10", "dev_expected_layers", "dev_exit_rate"}
    exits = replay_exits(replay_pooled_states(eval_model, texts), 0.93, 1, 2)
    assert 0 < (exits < eval_model[0].num_layers).mean() < 1, "the tiny model must have a mix of exits here"
    assert metrics["dev_exit_rate"] == pytest.approx((exits < eval_model[0].num_layers).mean())
    want = eval_model.encode(texts, exit_threshold=0.93, exit_min_layer=2, normalize_embeddings=True)
    ref = reference.encode(texts, normalize_embeddings=True)
    assert metrics["dev_cosine_mean"] == pytest.approx(float((want * ref).sum(1).mean()), abs=1e-5)
    assert metrics["dev_cosine_mean"] < 1.0 - 1e-4 and metrics["dev_cosine_p10"] <= metrics["dev_cosine_mean"]


def test_agreement_follows_the_role_and_works_on_plain_models(eval_model, eval_model_dir):
    texts = random_sentences(24, seed=6)
    reference = SentenceTransformer(eval_model_dir, device="cpu")
    eval_model[0].set_exit_defaults({"query": 0.5, "document": None, "default": None}, 1, 2, None)
    as_query = TeacherAgreementEvaluator(texts, reference=reference, task="query")(eval_model)
    as_document = TeacherAgreementEvaluator(texts, reference=reference, task="document")(eval_model)
    assert as_query["expected_layers"] < as_document["expected_layers"] == eval_model[0].num_layers
    plain = TeacherAgreementEvaluator(texts, reference=reference)(reference)
    assert plain["cosine_mean"] == pytest.approx(1.0, abs=1e-5) and plain["exit_rate"] == 0.0


def test_agreement_rejects_bad_input():
    with pytest.raises(ValueError, match="exactly one of reference_embeddings and reference"):
        TeacherAgreementEvaluator(["a"])
    with pytest.raises(ValueError, match=r"shape \(len\(texts\), D\) = \(2, D\)"):
        TeacherAgreementEvaluator(["a", "b"], np.zeros((3, 4)))
    with pytest.raises(ValueError, match="non-empty list of strings"):
        TeacherAgreementEvaluator([None], np.zeros((1, 4)))
