from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from st_leap.evaluation.beir import BEIRModel, document_text, evaluate_beir, load_beir_folder


def test_load_beir_folder_missing_corpus_fails_clearly(tiny_beir_dir):
    """A folder with queries and qrels but no corpus (arguana/scidocs/fiqa here) raises a FileNotFoundError naming it."""
    (Path(tiny_beir_dir) / "corpus.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="corpus"):
        load_beir_folder(tiny_beir_dir)


def test_load_beir_folder_reads_gzip_and_keeps_qrels_queries(tiny_beir_dir):
    """corpus.jsonl.gz reads like corpus.jsonl, and only queries with qrels are kept (as BEIR's loader does)."""
    plain = load_beir_folder(tiny_beir_dir)
    path = Path(tiny_beir_dir) / "corpus.jsonl"
    with path.open("rb") as src, gzip.open(str(path) + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()
    assert load_beir_folder(tiny_beir_dir) == plain
    corpus, queries, qrels = plain
    assert set(queries) == set(qrels) == {"q0", "q1", "q2", "q3"}
    assert len(corpus) == 12


def test_beir_model_encodes_title_and_text_with_exit(eval_model, tiny_beir_dir):
    """encode_corpus embeds 'title text' (text alone without a title, as mteb does) with the adapter's exit setting."""
    corpus, queries, _ = load_beir_folder(tiny_beir_dir)
    docs = list(corpus.values())
    adapter = BEIRModel(eval_model, exit_threshold=0.93, exit_min_layer=2)
    got = adapter.encode_corpus(docs, batch_size=4, convert_to_tensor=False)
    texts = [document_text(d) for d in docs]
    assert texts[0] == docs[0]["text"] and texts[1] == f"{docs[1]['title']} {docs[1]['text']}"
    want = eval_model.encode(texts, exit_threshold=0.93, exit_min_layer=2)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert adapter.corpus_stats.num_samples == len(docs)
    adapter.encode_queries(list(queries.values()), batch_size=4)
    assert adapter.query_stats.num_samples == len(queries)


def test_evaluate_beir_reports_ndcg_and_exit_stats(eval_model, tiny_beir_dir):
    """evaluate_beir returns NDCG@1,3,5,10 and exit statistics; full depth runs every text through all layers."""
    full = evaluate_beir(eval_model, tiny_beir_dir, exit_threshold=None, show_progress_bar=False)
    assert set(full["ndcg"]) == {"NDCG@1", "NDCG@3", "NDCG@5", "NDCG@10"}
    assert full["exit_stats"]["all"]["expected_layers"] == eval_model[0].num_layers
    assert full["exit_settings"]["exit_threshold"] is None
    early = evaluate_beir(eval_model, tiny_beir_dir, exit_threshold=0.9, exit_min_layer=2, show_progress_bar=False)
    assert early["exit_stats"]["all"]["expected_layers"] == pytest.approx(2.0)
    assert early["exit_stats"]["all"]["num_samples"] == 4 + 12
    assert "package_versions" in early["run_info"]
