from __future__ import annotations

import copy

import pytest
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.util import cos_sim

from st_leap.evaluation import QueryDepthEvaluator
from st_leap.evaluation.beir import document_text, load_beir_folder


@pytest.fixture()
def beir(tiny_beir_dir):
    corpus, queries, qrels = load_beir_folder(tiny_beir_dir)
    relevant = {q: set(docs) for q, docs in qrels.items()}
    return queries, {cid: document_text(doc) for cid, doc in corpus.items()}, relevant


def test_reference_at_full_depth_scores_what_the_stock_evaluator_scores(eval_model, beir):
    """The model itself as reference: its full depth is the reference score (cosine 1), equal to what
    sentence-transformers' InformationRetrievalEvaluator computes with both sides from the model."""
    queries, corpus, relevant = beir
    reference = copy.deepcopy(eval_model)
    evaluator = QueryDepthEvaluator(queries, corpus, relevant, reference=reference, depths=[1, 2, 4], name="t")
    metrics = evaluator(eval_model)
    stock = InformationRetrievalEvaluator(queries, corpus, relevant, ndcg_at_k=[10], score_functions={"cos": cos_sim})
    expected = stock(reference)["cos_ndcg@10"]
    assert metrics["t_reference_ndcg@10"] == pytest.approx(expected)
    assert metrics["t_depth4_ndcg@10"] == pytest.approx(expected)
    assert metrics["t_depth4_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["t_depth1_cosine"] < 0.999  # a cut query is not the reference's query
    assert evaluator.primary_metric == "t_depth1_ndcg@10"


def test_depths_default_to_every_layer_and_bad_depths_fail(eval_model, beir):
    queries, corpus, relevant = beir
    evaluator = QueryDepthEvaluator(queries, corpus, relevant, reference=copy.deepcopy(eval_model))
    assert {f"depth{d}_ndcg@10" for d in range(1, 5)} <= set(evaluator(eval_model))
    with pytest.raises(ValueError, match="beyond"):
        QueryDepthEvaluator(queries, corpus, relevant, reference=eval_model, depths=[9])(eval_model)
    with pytest.raises(ValueError, match="primary_depth"):
        QueryDepthEvaluator(queries, corpus, relevant, reference=eval_model, depths=[1], primary_depth=2)


def test_the_index_embeddings_can_be_given(eval_model, beir):
    """A user who keeps an index passes its embeddings: the scores equal those of the reference embedding the corpus
    itself; a wrong row count fails, naming the expected count."""
    queries, corpus, relevant = beir
    reference = copy.deepcopy(eval_model)
    own = QueryDepthEvaluator(queries, corpus, relevant, reference=reference, depths=[1, 3])
    given = QueryDepthEvaluator(queries, corpus, relevant, reference=reference, depths=[1, 3],
                                corpus_embeddings=reference.encode_document(list(corpus.values())))
    assert given.reference_ndcg == pytest.approx(own.reference_ndcg)
    assert given(eval_model)["depth1_ndcg@10"] == pytest.approx(own(eval_model)["depth1_ndcg@10"])
    with pytest.raises(ValueError, match=f"one row per document \\({len(corpus)}\\)"):
        QueryDepthEvaluator(queries, corpus, relevant, reference=reference,
                            corpus_embeddings=reference.encode_document(list(corpus.values())[:-1]))
