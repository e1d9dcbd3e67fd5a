"""The query benchmark reads the dev curve the Trainer logged and chooses the serving depth on dev only."""

from __future__ import annotations

import json

import pytest

from benchmarks.query import curve as query_curve
from benchmarks.query.run import choose_depth


def test_choose_depth_is_the_shallowest_within_budget():
    scores = {"reference_ndcg@10": 0.60, "ndcg@10": {1: 0.30, 2: 0.50, 3: 0.58, 4: 0.59, 5: 0.60}}
    assert choose_depth(scores, budget=3.0) == 3
    assert choose_depth(scores, budget=1.0) == 4
    assert choose_depth(scores, budget=0.0) == 5  # nothing shallower keeps the quality: full depth


def test_curve_reads_the_logged_dev_signals(tmp_path):
    history = [
        {"loss": 1.0, "step": 50},
        {"eval_depth-dev_reference_ndcg@10": 0.3, "eval_depth-dev_depth2_ndcg@10": 0.1, "eval_depth-dev_depth2_cosine": 0.6,
         "eval_depth-dev_depth3_ndcg@10": 0.2, "eval_depth-dev_depth3_cosine": 0.7, "step": 500},
        {"eval_depth-dev_reference_ndcg@10": 0.3, "eval_depth-dev_depth2_ndcg@10": 0.15, "eval_depth-dev_depth2_cosine": 0.65,
         "eval_depth-dev_depth3_ndcg@10": 0.25, "eval_depth-dev_depth3_cosine": 0.75, "step": 1000},
    ]
    (tmp_path / "leap_training.json").write_text(json.dumps({"log_history": history}))
    rows = query_curve.curve(query_curve.log_history(tmp_path))
    assert [r["step"] for r in rows] == [500, 1000]
    assert rows[1]["ndcg@10"] == {2: 0.15, 3: 0.25} and rows[0]["cosine"][3] == 0.7
    text = query_curve.markdown("cmd", rows)
    assert "| 1000 | 30.00 | 15.00 (0.650) | 25.00 (0.750) |" in text


def test_real_query_dev_never_reads_a_test_query(tmp_path, monkeypatch):
    """The real-query dev signal and the stand-in query log come from queries outside the test qrels, with no text of
    a test query either; the two halves are disjoint, seeded, and cover every such query; the labelled half keeps
    SciFact-style evidence documents from the metadata."""
    from benchmarks.query import query_dev

    folder = tmp_path / "beir" / "toy"
    (folder / "qrels").mkdir(parents=True)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nt1\td1\t1\nt2\td2\t1\n", encoding="utf-8")
    rows = [{"_id": "t1", "text": "Test claim one.", "metadata": {}},
            {"_id": "t2", "text": "Test claim two.", "metadata": {"d2": [{"label": "SUPPORT"}]}},
            {"_id": "dup", "text": "test claim ONE.", "metadata": {}}]  # a test query's text under another id
    rows += [{"_id": f"q{i}", "text": f"claim {i}", "metadata": {"d1": [{"sentences": [0]}]} if i % 2 else {}}
             for i in range(10)]
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.setattr(query_dev.resources, "beir_dir", lambda task: folder)
    queries, evidence = query_dev.non_test_queries("toy")
    assert set(queries) == {f"q{i}" for i in range(10)}
    assert evidence == {f"q{i}": {"d1"} for i in range(1, 10, 2)}
    log, held_out = query_dev.split_queries(queries)
    assert not set(log) & set(held_out) and set(log) | set(held_out) == set(queries)
    assert (log, held_out) == query_dev.split_queries(queries)
    out = tmp_path / "log.txt"
    assert query_dev.main(["--task", "scifact", "--write-log", str(out)]) == 0
    assert out.read_text(encoding="utf-8").splitlines() == [queries[q] for q in log]


def test_inits_table_names_each_corpus_reference():
    """Runs on two corpora are each compared with their own index model, never with the first run's."""
    from benchmarks.query.inits import markdown

    def run(path, reference):
        point = {"step": 250, "ndcg@10": 0.5, "cosine": 0.8, "reference_ndcg@10": reference}
        return {"path": path, "init": "spread", "steps": 250, "max_steps": 250, "curve": [point],
                "final_dev": {"ndcg@10": 0.5, "cosine": 0.8}, "maps": "trained", "train_minutes": 1.0,
                "index_minutes": 0.0}

    one = markdown("cmd", [run("a", 0.5681), run("b", 0.5681)])
    assert "full depth: 56.81 NDCG@10" in one
    two = markdown("cmd", [run("a", 0.5681), run("b", 0.4925)])
    assert "56.81 for `a`, 49.25 for `b`" in two


def test_inits_settings_and_minutes_of_a_resumed_run(tmp_path):
    """A batch other than 64 is named with its texts, a training seed other than 42 with its seed; the training
    minutes of a run resumed before earlier segments were recorded are marked as its last segment's, and counted
    whole otherwise."""
    from benchmarks.query.inits import markdown, run_summary

    def record(folder, **fields):
        folder.mkdir()
        config = {"max_steps": 4, "batch_size": 128, "num_sentences": 256, "learning_rate": 1e-4,
                  "retrieval": {"layers": [3], "scale": 20.0}, "loss": {}, "corpus": {}}
        (folder / "query_encoder.json").write_text(json.dumps({
            "init": "spread", "depth": 3, "steps": 4, "train_seconds": 120.0, "index_seconds": 0.0, "maps": "trained",
            "dev": {"ndcg@10": 0.5, "cosine": 0.8}, "config": config,
            "log_history": [{"step": 4, "eval_corpus_dev_depth3_ndcg@10": 0.5, "eval_corpus_dev_depth3_cosine": 0.8}],
            **fields}))
        return run_summary(folder)

    old = record(tmp_path / "old", resumed_from="work/checkpoint-2")
    new = record(tmp_path / "new", resumed_from="work/checkpoint-2", earlier_train_seconds=60.0)
    whole = record(tmp_path / "whole")
    assert old["settings"] == "batch 128 on 256 texts"
    reseeded = json.loads((tmp_path / "whole" / "query_encoder.json").read_text())
    reseeded["config"]["seed"] = 2  # fit-query-encoder --train-seed 2
    (tmp_path / "reseeded").mkdir()
    (tmp_path / "reseeded" / "query_encoder.json").write_text(json.dumps(reseeded))
    assert run_summary(tmp_path / "reseeded")["settings"] == "batch 128 on 256 texts, train seed 2"
    assert (old["train_minutes_partial"], new["train_minutes_partial"], whole["train_minutes_partial"]) == (
        True, False, False)
    table = markdown("cmd", [old, new, whole])
    assert table.count("2.0 (last segment)") == 1 and table.count("| 2.0 |") == 2


def test_the_served_path_is_timed_as_encode_is_and_must_match_it(tiny_bert_dir, tmp_path, monkeypatch):
    """The int8 phase times an exported graph on the server's lean path beside ``encode``: ``LeanPath`` exists only
    for one-graph exports, gives ``encode``'s embeddings, runs in ``time_encode``'s rounds, and refuses to be timed
    when its embeddings differ from ``encode``'s."""
    pytest.importorskip("onnxruntime")
    import numpy as np

    import st_leap
    from benchmarks.query.corpus import LeanPath
    from st_leap import serving
    from st_leap.backends import export
    from st_leap.diagnostics import time_encode
    from tests.conftest import SENTENCES

    torch_model = st_leap.from_pretrained(tiny_bert_dir, device="cpu")
    assert LeanPath.of(torch_model, SENTENCES[:4]) is None  # no graph: not on the lean path
    graph = st_leap.load(str(export(torch_model, tmp_path / "int8", "onnx", quantize="int8")))
    lean = LeanPath.of(graph, SENTENCES[:4])
    assert lean is not None
    assert np.abs(lean.encode(SENTENCES, batch_size=1) - graph.encode(SENTENCES, batch_size=1)).max() <= 1e-6
    timings = time_encode(graph, SENTENCES, {"encode": {}, "served": {}}, batch_size=1, repeats=2,
                          models={"served": lean}, show_progress_bar=False)
    assert len(timings["served"]["seconds"]) == 2 and timings["served"]["exit_stats"] is None
    drift = serving.lean_encode
    monkeypatch.setattr(serving, "lean_encode", lambda module, texts, **kw: drift(module, texts, **kw) + 1e-3)
    with pytest.raises(RuntimeError, match="differs from encode"):
        LeanPath.of(graph, SENTENCES[:4])
