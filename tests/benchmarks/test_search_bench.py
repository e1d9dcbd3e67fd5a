"""The search benchmark chooses its exit setting on dev signals only, and scores every mode of issue 13 the way the
model computes it: a model that *is* the original scores what the original scores, in every mode, at full depth."""

from __future__ import annotations

import json

import pytest

from benchmarks.search import run as search
from st_leap.model import as_early_exit
from tests.conftest import stock_model


def dev_rows(stsb, queries, documents):
    thetas = (None, 0.9, 0.95, 0.97)
    return {"rows": [{"theta": t, "stsb_dev": {"spearman": s}, "queries": {"agreement": q}, "documents": {"agreement": d}}
                     for t, s, q, d in zip(thetas, stsb, queries, documents)]}


def test_choose_thresholds_takes_the_lowest_theta_that_keeps_both_dev_signals():
    dev = dev_rows(stsb=[82.0, 80.5, 81.5, 81.9], queries=[0.99, 0.97, 0.985, 0.99], documents=[0.98, 0.90, 0.92, 0.975])
    # queries: 0.9 fails STS-B (80.5 < 81.0) and agreement, 0.95 passes both; documents: only 0.97 is within 0.01
    assert search.choose_thresholds(dev, agreement_margin=0.01, stsb_margin=1.0) == {"queries": 0.95, "documents": 0.97}
    # nothing passes a zero margin where every theta loses something: full depth (None) for that role
    assert search.choose_thresholds(dev, agreement_margin=0.0, stsb_margin=0.0) == {"queries": None, "documents": None}


def test_search_benchmark_on_the_original_itself(smooth_bert_dir, tmp_path, monkeypatch):
    """The 'trained' model is the original with exit defaults: full depth, query exit at no-exit and the index mode
    at full depth must all reproduce the original's NDCG, with document cosine 1."""
    monkeypatch.chdir(tmp_path)
    model_dir = tmp_path / "model"
    as_early_exit(stock_model(smooth_bert_dir), exit_threshold={"query": 0.95, "document": None, "default": None},
                  exit_min_layer=2).save(str(model_dir))
    out = tmp_path / "results" / "search"
    search.main(["--model", str(model_dir), "--original", smooth_bert_dir, "--tasks", "scifact", "--limit", "6",
                 "--thetas", "0.9,0.99", "--threads", "1", "--batch-sizes", "1", "--repeats", "1",
                 "--dev-queries", "4", "--dev-documents", "8", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["run_info"]["min_layer"] == 2
    res = result["tasks"]["scifact"]
    ndcg = {(r["mode"], r["theta"]): r["ndcg10"] for r in res["rows"]}
    original = ndcg[("original model", None)]
    assert ndcg[("full depth", None)] == pytest.approx(original, abs=1e-6)
    assert ndcg[("index-compatible", None)] == pytest.approx(original, abs=1e-6)
    assert res["doc_cos_to_original"] == pytest.approx(1.0, abs=1e-5)
    assert result["dev"]["rows"][0]["queries"]["agreement"] == pytest.approx(1.0, abs=1e-5)
    assert result["chosen"]["queries"] in (None, 0.9, 0.99)
    for role in ("queries", "docs"):
        cell = res["speed"][role][0]
        assert set(cell["rows"]) == {"original", "full depth", "theta 0.9", "theta 0.99"}
        assert all(row["speedup"] > 0 for row in cell["rows"].values())
    modes = [(c["task"], c["mode"]) for c in result["checks"]]
    assert modes == [("scifact", m) for m in ("full depth", "query exit", "index-compatible", "both exit")] + [
        ("stsb", "at the queries' theta")]
    assert next(c for c in result["checks"] if c["mode"] == "full depth")["met"], "the original is within 1.0 of itself"
    assert (out.parent / "search_scifact.png").exists() and "## scifact test" in out.with_suffix(".md").read_text()
