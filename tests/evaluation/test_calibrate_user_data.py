"""Calibration on the user's data: ``st-leap calibrate MODEL --texts/--beir/--pairs`` and ``st_leap.calibrate``.

Timing runs on a handful of texts with one round: the tests check the structure of what is measured and saved,
never the speed values."""

from __future__ import annotations

import json

import pytest

import st_leap
from st_leap.cli import main
from st_leap.evaluation.user_data import RetrievalData, ScoredPairs, Texts, read_beir, read_pairs, read_texts
from st_leap.monitoring import ExitMonitor, load_references
from tests.evaluation.conftest import random_sentences

FAST = ["--thresholds", "0.9,0.99", "--exit-min-layer", "2", "--time-sample", "8", "--repeats", "1"]


@pytest.fixture()
def texts_file(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(random_sentences(60, seed=11)) + "\n", encoding="utf-8")
    return path


def write_beir(folder, num_queries: int = 10, num_docs: int = 20, qrels_rows: list[str] | None = None):
    """A BEIR folder: ``num_docs`` documents, ``num_queries`` queries, each judged relevant to two documents."""
    (folder / "qrels").mkdir(parents=True)
    docs = random_sentences(num_docs, seed=21)
    queries = random_sentences(num_queries, seed=22)
    corpus_lines = [json.dumps({"_id": f"d{i}", "title": "", "text": t}) for i, t in enumerate(docs)]
    (folder / "corpus.jsonl").write_text("\n".join(corpus_lines) + "\n", encoding="utf-8")
    query_lines = [json.dumps({"_id": f"q{i}", "text": t}) for i, t in enumerate(queries)]
    (folder / "queries.jsonl").write_text("\n".join(query_lines) + "\n", encoding="utf-8")
    if qrels_rows is None:
        qrels_rows = [f"q{i}\td{(2 * i + j) % num_docs}\t1" for i in range(num_queries) for j in range(2)]
    (folder / "qrels" / "test.tsv").write_text("\n".join(["query-id\tcorpus-id\tscore", *qrels_rows]) + "\n")
    return folder


def saved_default(value, role: str):
    return value[role] if isinstance(value, dict) else value


def test_cli_calibrate_texts_names_the_pick_with_a_measured_speedup(eval_model_dir, texts_file, tmp_path, capsys):
    """--texts with a 1-point budget: the pick of the role, its agreement and a measured speed-up are reported."""
    out = tmp_path / "cal"
    code = main(["calibrate", eval_model_dir, "--texts", str(texts_file), "--max-quality-drop", "1", *FAST,
                 "--out", str(out)])
    assert code == 0
    result = json.loads((out / "calibrate.json").read_text())
    assert result["data"] == {"kind": "texts", "source": str(texts_file), "num_texts": 60}
    entry = result["roles"]["all"]
    assert entry["metric"] == "agreement" and entry["task"] is None
    assert entry["full"]["mean_cosine"] == pytest.approx(100.0) and entry["full"]["nn_at_k"] == pytest.approx(100.0)
    kinds = {row["kind"] for row in entry["rows"]}
    assert kinds == {"adaptive", "static"}
    assert all({"mean_cosine", "nn_at_k", "quality", "layer_reduction", "measured_speedup"} <= set(r) for r in entry["rows"])
    picked = entry["picked"]
    assert isinstance(picked["measured_speedup"], float) and picked["label"]
    assert -picked["delta"] <= 1 + 1e-9
    assert (out / "calibrate.md").exists()
    printed = capsys.readouterr().out
    assert "picked for every role:" in printed and "measured speed-up" in printed


def test_cli_calibrate_texts_saves_the_pick_for_one_role(eval_model_dir, texts_file, tmp_path):
    """--role query encodes the texts as queries and saves the pick for encode_query only."""
    out, saved = tmp_path / "cal", tmp_path / "saved"
    code = main(["calibrate", eval_model_dir, "--texts", str(texts_file), "--max-quality-drop", "100", *FAST,
                 "--role", "query", "--out", str(out), "--save-model", str(saved)])
    assert code == 0
    result = json.loads((out / "calibrate.json").read_text())
    entry = result["roles"]["query"]
    assert entry["task"] == "query" and len(result["roles"]) == 1
    timed = [row for row in entry["rows"] if row["measured_speedup"] is not None]
    assert 1 <= len(timed) <= 3 and entry["timing"]["num_texts"] == 8 and entry["timing"]["repeats"] == 1
    picked = entry["picked"]
    reloaded = st_leap.load(str(saved))
    assert saved_default(reloaded[0].exit_threshold, "query") == picked["theta"]
    assert saved_default(reloaded[0].truncate_layers, "query") == picked["truncate_layers"]
    assert saved_default(reloaded[0].exit_threshold, "document") is None
    assert saved_default(reloaded[0].truncate_layers, "document") is None
    assert "measured speed-up" in (saved / "README.md").read_text()
    # the monitoring reference of the role, measured at the pick, is saved beside the model and reloads
    reference = load_references(saved)["query"]
    assert reference.setting["exit_threshold"] == picked["theta"]
    assert reference.setting["truncate_layers"] == picked["truncate_layers"]
    assert entry["reference"]["num_texts"] == len(reference.texts) == sum(reference.counts)
    assert entry["reference"]["expected_layers"] == pytest.approx(reference.expected_layers)
    monitor = ExitMonitor(reloaded, reference=str(saved), window=4, sample_rate=1.0)
    assert monitor.reference_for("query") is not None and monitor.reference_for(None) is None
    served = monitor.encode(reference.texts[:4], task="query")
    plain = st_leap.encode_with_exits(reloaded, reference.texts[:4], task="query")
    assert served.exit_layers.tolist() == plain.exit_layers.tolist()
    assert len(monitor.windows) == 1 and monitor.windows[0]["num_checked"] == 4


def test_cli_calibrate_beir_per_role_and_saves(eval_model_dir, tmp_path, capsys):
    """--beir calibrates queries (encode_query) and documents (encode_document) on NDCG@10 and saves both picks."""
    folder = write_beir(tmp_path / "beir")
    out, saved = tmp_path / "cal", tmp_path / "saved"
    code = main(["calibrate", eval_model_dir, "--beir", str(folder), "--max-quality-drop", "100", *FAST,
                 "--out", str(out), "--save-model", str(saved)])
    assert code == 0
    result = json.loads((out / "calibrate.json").read_text())
    assert result["data"]["num_queries"] == 10 and result["data"]["num_documents"] == 20
    assert set(result["roles"]) == {"query", "document"}
    for role, entry in result["roles"].items():
        assert entry["metric"] == "ndcg@10" and entry["task"] == role
        assert 0.0 <= entry["full"]["ndcg@10"] <= 100.0
        assert isinstance(entry["picked"]["measured_speedup"], float)
    assert set(result["combined"]) == {"ndcg@10", "full_depth", "delta"}
    printed = capsys.readouterr().out
    assert "picked for the 'query' role:" in printed and "picked for the 'document' role:" in printed
    reloaded = st_leap.load(str(saved))
    for role, entry in result["roles"].items():
        assert saved_default(reloaded[0].exit_threshold, role) == entry["picked"]["theta"]
        assert saved_default(reloaded[0].truncate_layers, role) == entry["picked"]["truncate_layers"]


def test_python_calibrate_on_pairs_and_on_a_list_of_texts(eval_model, sts_pairs, tmp_path):
    """st_leap.calibrate takes a spec mapping or the parsed data; pairs are scored with cosine Spearman."""
    s1, s2, scores = sts_pairs
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "\n".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) for a, b, s in zip(s1, s2, scores)) + "\n"
    )
    common = dict(thresholds=[0.9], static_depths=[1, 2], time_sample=6, repeats=1, timed_candidates=1,
                  show_progress_bar=False)
    result = st_leap.calibrate(eval_model, {"pairs": str(path)}, 100, **common)
    entry = result["roles"]["all"]
    assert entry["metric"] == "spearman" and len(entry["rows"]) == 3
    assert entry["full"]["spearman"] == entry["full"]["quality"]
    assert isinstance(entry["picked"]["measured_speedup"], float)
    # the reference a monitor needs: the exit histogram of the (distinct) sentences at the pick, full-depth embeddings
    reference = entry["reference"]
    assert reference.counts == entry["picked"]["distribution"]
    assert reference.texts == list(dict.fromkeys([*s1, *s2]))
    assert reference.embeddings.shape == (len(reference.texts), eval_model.get_embedding_dimension())
    assert ExitMonitor(eval_model, reference=result).reference_for(None) is reference
    from_list = st_leap.calibrate(eval_model, random_sentences(20, seed=3), 0.5, role="document", reference_size=0,
                                  **common)
    assert from_list["data"]["kind"] == "texts" and from_list["roles"]["document"]["task"] == "document"
    assert from_list["roles"]["document"]["reference"] is None


def test_readers_parse_each_format(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("score\tsentence1\tsentence2\n1.5\ta b\tc d\n\n0.5\te f\tg h\n")
    pairs = read_pairs(tsv)
    assert isinstance(pairs, ScoredPairs) and pairs.scores == [1.5, 0.5] and pairs.sentences1 == ["a b", "e f"]
    csv_file = tmp_path / "p.csv"
    csv_file.write_text('sentence1,sentence2,score\n"a, b",c,1\nd,e,2\n')
    assert read_pairs(csv_file).sentences1 == ["a, b", "d"]
    beir = read_beir(write_beir(tmp_path / "beir", 3, 6))
    assert isinstance(beir, RetrievalData) and len(beir.queries) == 3 and len(beir.corpus) == 6
    texts = tmp_path / "t.txt"
    texts.write_text("one\n\n two \n")
    assert read_texts(texts) == Texts(["one", "two"], source=str(texts))
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"_id": "q1", "text": " first "}\n\n{"_id": "q2", "title": "T", "text": "second"}\n')
    assert read_texts(queries).texts == ["first", "T second"]


def test_read_beir_keeps_an_empty_document_and_refuses_an_empty_query(tmp_path):
    """An empty document is part of the index (one warning naming it); an empty query, or a corpus with no text at
    all, fails naming the file and line."""
    folder = write_beir(tmp_path / "beir", 3, 6)
    lines = (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    lines[2] = json.dumps({"_id": "d2", "title": "", "text": "  "})
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="1 of 6 documents have an empty title and text \\(ids 'd2'\\)"):
        beir = read_beir(folder)
    assert list(beir.corpus)[2] == "d2" and beir.corpus["d2"] == "" and len(beir.corpus) == 6
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps({"_id": f"d{i}", "text": ""}) for i in range(6)) + "\n")
    with pytest.raises(ValueError, match="corpus.jsonl, line 1: no documents with text"):
        read_beir(folder)
    queries = tmp_path / "beir" / "queries.jsonl"
    queries.write_text('{"_id": "q0", "text": "a b"}\n{"_id": "q1", "text": ""}\n', encoding="utf-8")
    write = folder / "corpus.jsonl"
    write.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="queries.jsonl, line 2: empty title and text"):
        read_beir(folder)


def _pairs(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return ["--pairs", str(path)], str(path)


def _texts(tmp_path, text: str):
    path = tmp_path / "texts.txt"
    path.write_text(text, encoding="utf-8")
    return ["--texts", str(path)], str(path)


def _jsonl_texts(tmp_path, text: str):
    path = tmp_path / "texts.jsonl"
    path.write_text(text, encoding="utf-8")
    return ["--texts", str(path)], str(path)


def _beir(tmp_path, rows: list[str]):
    folder = write_beir(tmp_path / "beir", 3, 6, qrels_rows=rows)
    return ["--beir", str(folder)], str(folder / "qrels" / "test.tsv")


MALFORMED = {
    "pairs: missing column": (lambda p: _pairs(p, "p.tsv", "sentence1\tsentence2\na\tb\n"), "line 1", "score"),
    "pairs: bad score": (lambda p: _pairs(p, "p.tsv", "sentence1\tsentence2\tscore\na\tb\t1\nc\td\thigh\n"),
                         "line 3", "'high' is not a number"),
    "pairs: empty file": (lambda p: _pairs(p, "p.csv", ""), "line 1", "empty"),
    "pairs: jsonl missing key": (lambda p: _pairs(p, "p.jsonl", '{"sentence1": "a", "sentence2": "b", "score": 1}\n'
                                                  '{"sentence1": "a", "score": 2}\n'), "line 2", "sentence2"),
    "texts: one text": (lambda p: _texts(p, "only one\n\n"), "line 2", "at least 2"),
    "texts: empty file": (lambda p: _texts(p, ""), "line 1", "empty"),
    "texts: jsonl without text": (lambda p: _jsonl_texts(p, '{"_id": "a", "text": "x"}\n{"_id": "b"}\n'), "line 2",
                                  "missing text"),
    "beir: unknown query id": (lambda p: _beir(p, ["q0\td1\t1", "q9\td2\t1"]), "line 3", "'q9'"),
    "beir: unknown corpus id": (lambda p: _beir(p, ["q0\tnope\t1"]), "line 2", "'nope'"),
    "beir: bad relevance": (lambda p: _beir(p, ["q0\td1\tyes"]), "line 2", "not a number"),
}


@pytest.fixture()
def no_model_loads(monkeypatch):
    """Any attempt to load a model fails the test: malformed data must be rejected before that."""
    import st_leap.model
    from st_leap import resources

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr(st_leap.model, "load_model", refuse)
    monkeypatch.setattr(st_leap.model, "from_pretrained", refuse)
    monkeypatch.setattr(resources, "resolve_model", refuse)


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_data_fails_before_the_model_loads(case, no_model_loads, tmp_path, capsys):
    make, line, detail = MALFORMED[case]
    flags, path = make(tmp_path)
    code = main(["calibrate", "some-model", *flags, "--max-quality-drop", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert path in err and line in err and detail in err
    kind, where = flags[0].lstrip("-"), flags[1]
    with pytest.raises(ValueError, match=line):
        st_leap.calibrate("some-model", {kind: where}, 1)


def test_models_with_exit_maps_are_swept_with_and_without_them(eval_model, tmp_path):
    """With an ExitMaps module every point is measured with and without the maps; a pick without them is saved by
    removing the maps (every role picked that way)."""
    exit_maps = pytest.importorskip("st_leap.exit_maps")
    exit_maps.fit_exit_maps(eval_model, random_sentences(40, seed=5), show_progress_bar=False)
    from st_leap.evaluation.calibration import has_exit_maps, save_calibrated

    assert has_exit_maps(eval_model)
    result = st_leap.calibrate(eval_model, random_sentences(20, seed=6), 100, thresholds=[0.9], static_depths=[1],
                               time_sample=6, repeats=1, timed_candidates=2, show_progress_bar=False)
    rows = result["roles"]["all"]["rows"]
    assert result["exit_maps"] is True
    assert sorted((row["kind"], row["exit_maps"]) for row in rows) == [
        ("adaptive", False), ("adaptive", True), ("static", False), ("static", True)
    ]
    assert len({row["label"] for row in rows}) == 4
    without = next(row for row in rows if row["kind"] == "static" and row["exit_maps"] is False)
    result["roles"]["all"]["picked"] = {**without, "measured_speedup": 1.5}
    saved = save_calibrated(eval_model, result, tmp_path / "saved")
    assert saved["notes"] and not has_exit_maps(st_leap.load(str(tmp_path / "saved")))


def test_cli_calibrate_stsb_reports_the_measured_speedup_of_its_pick(monkeypatch, tiny_data_dir, eval_model_dir, tmp_path,
                                                                     capsys):
    """The STS-B default is scored pairs like any other: the best points are timed on its sentences."""
    monkeypatch.setenv("ST_LEAP_DATA", str(tiny_data_dir))
    out = tmp_path / "cal"
    code = main(["calibrate", eval_model_dir, "--max-quality-drop", "100", *FAST, "--out", str(out)])
    assert code == 0
    result = json.loads((out / "calibrate.json").read_text())
    assert result["data"]["kind"] == "pairs" and result["data"]["source"] == "STS-B dev"
    entry = result["roles"]["all"]
    assert isinstance(entry["picked"]["measured_speedup"], float)
    assert entry["timing"]["num_texts"] == 8 and entry["timing"]["repeats"] == 1
    assert "measured speed-up" in capsys.readouterr().out


def test_python_calibrate_on_stsb_times_and_saves_its_pick(monkeypatch, tiny_data_dir, eval_model, tmp_path):
    """st_leap.calibrate(model) without data calibrates on STS-B dev, with the pick timed and saved for a role."""
    monkeypatch.setenv("ST_LEAP_DATA", str(tiny_data_dir))
    result = st_leap.calibrate(eval_model, None, 100, thresholds=[0.9], static_depths=[1], role="document",
                               time_sample=6, repeats=1, save_model=tmp_path / "saved", show_progress_bar=False)
    assert result["data"]["source"] == "STS-B dev"
    picked = result["roles"]["document"]["picked"]
    assert isinstance(picked["measured_speedup"], float)
    reloaded = st_leap.load(str(tmp_path / "saved"))
    assert saved_default(reloaded[0].exit_threshold, "document") == picked["theta"]
    assert saved_default(reloaded[0].truncate_layers, "document") == picked["truncate_layers"]
    assert saved_default(reloaded[0].truncate_layers, "query") is None
    assert result["saved"]["references"] == ["document"]


def test_cli_calibrate_pairs(eval_model_dir, sts_pairs, tmp_path):
    """--pairs FILE (CSV) is scored with cosine Spearman in the plain encode role."""
    s1, s2, scores = sts_pairs
    path = tmp_path / "pairs.csv"
    path.write_text("sentence1,sentence2,score\n" + "".join(f"{a},{b},{s}\n" for a, b, s in zip(s1, s2, scores)))
    out = tmp_path / "cal"
    assert main(["calibrate", eval_model_dir, "--pairs", str(path), "--max-quality-drop", "100", *FAST,
                 "--no-static", "--out", str(out)]) == 0
    result = json.loads((out / "calibrate.json").read_text())
    assert result["data"]["kind"] == "pairs" and result["data"]["num_pairs"] == len(scores)
    entry = result["roles"]["all"]
    assert entry["metric"] == "spearman" and {row["kind"] for row in entry["rows"]} == {"adaptive"}
    assert isinstance(entry["picked"]["measured_speedup"], float)
