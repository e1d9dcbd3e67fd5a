from __future__ import annotations

import json
import subprocess
import sys

import pytest

from st_leap.cli import main
from tests.conftest import SENTENCES


def test_cli_diagnose_writes_json_and_png(tiny_bert_dir, tmp_path, capsys):
    """`st-leap diagnose MODEL --sentences FILE --out DIR` prints the table and writes diagnose.json/png."""
    sentences = tmp_path / "s.txt"
    sentences.write_text("\n".join(SENTENCES) + "\n")
    out = tmp_path / "out"
    code = main(["diagnose", tiny_bert_dir, "--sentences", str(sentences), "--out", str(out), "--no-overhead",
                 "--thresholds", "0.5,0.95", "--exit-min-layer", "2"])
    assert code == 0
    result = json.loads((out / "diagnose.json").read_text())
    assert set(result["thresholds"]) == {"0.5", "0.95"}
    assert result["num_sentences"] == len(SENTENCES)
    assert (out / "diagnose.png").stat().st_size > 0
    assert "verdict" in capsys.readouterr().out


def test_cli_rejects_bad_arguments(tiny_bert_dir, tmp_path, capsys):
    """Bad thresholds and exit settings fail with a message, not a traceback."""
    with pytest.raises(SystemExit) as error:
        main(["diagnose", tiny_bert_dir, "--thresholds", "high"])
    assert error.value.code == 2
    code = main(["diagnose", tiny_bert_dir, "--exit-min-layer", "9", "--no-overhead", "--out", str(tmp_path)])
    assert code == 2
    assert "exit_min_layer must be in [1, 4]" in capsys.readouterr().err
    code = main(["diagnose", tiny_bert_dir, "--sentences", str(tmp_path / "missing.txt"), "--no-overhead"])
    assert code == 2


def test_cli_entry_point_help():
    """`python -m st_leap --help` lists the subcommands."""
    out = subprocess.run([sys.executable, "-m", "st_leap", "--help"], capture_output=True, text=True, check=True).stdout
    assert "diagnose" in out and "demo" in out


def test_cli_demo_end_to_end_on_tiny_model(tiny_bert_dir, tmp_path, capsys, stsb_sample):
    """`st-leap demo` diagnoses, retrofits with LEAPLoss, and writes a before/after table for both models."""
    out = tmp_path / "demo"
    code = main(["demo", "--model", tiny_bert_dir, "--out", str(out), "--train-steps", "2", "--timing-sentences", "8",
                 "--repeats", "1", "--thresholds", "0.5,0.95", "--search-steps", "0"])
    assert code == 0
    report = json.loads((out / "demo.json").read_text())
    assert set(report["table"]) == {"original", "LEAP"}
    for rows in report["table"].values():
        assert [r["setting"] for r in rows] == ["full depth", "theta=0.50", "theta=0.95"]
        assert rows[0]["exit_rate"] == 0.0 and -1.0 <= rows[1]["stsb"] <= 1.0
    assert (out / "leap-model" / "modules.json").exists()
    assert (out / "original_diagnose.png").exists() and (out / "leap_diagnose.png").exists()
    assert "before/after" in capsys.readouterr().out


def tiny_beir(folder, n_documents: int = 240):
    """A BEIR folder of ``n_documents`` word-salad documents, 6 test queries (each a phrase of its document)."""
    import random

    from tests.conftest import WORDS

    rng = random.Random(0)
    (folder / "qrels").mkdir(parents=True)
    documents = []
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for i in range(n_documents):
            text = " ".join(" ".join(rng.choice(WORDS) for _ in range(6)).capitalize() + "." for _ in range(3))
            documents.append(text)
            f.write(json.dumps({"_id": f"d{i}", "title": " ".join(rng.choice(WORDS) for _ in range(3)), "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as f:
        for i in range(6):
            f.write(json.dumps({"_id": f"q{i}", "text": documents[i * 7].split(".")[0]}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i * 7}\t1\n" for i in range(6)))
    return folder


def test_cli_demo_search_step_trains_a_query_encoder_for_the_index(tiny_bert_dir, tmp_path, capsys, stsb_sample):
    """Step 4 of `st-leap demo`: a 3-layer query encoder trained on the index's documents, scored on the folder's
    test queries against the original's full-depth index, beside the original at full depth and cut at 3."""
    import st_leap
    from st_leap.backends import query_side
    from st_leap.model import num_layers

    folder = tiny_beir(tmp_path / "beir")
    out = tmp_path / "demo"
    code = main(["demo", "--model", tiny_bert_dir, "--out", str(out), "--train-steps", "0", "--timing-sentences", "8",
                 "--repeats", "1", "--thresholds", "0.5", "--search-steps", "2", "--search-corpus", str(folder)])
    assert code == 0
    search = json.loads((out / "demo.json").read_text())["search"]
    assert [(r["query encoder"], r["layers"]) for r in search["rows"]] == [
        ("original, full depth", 4), ("original, cut", 3), ("trained on the documents", 3)]
    assert all(0.0 <= r["ndcg@10"] <= 1.0 and r["speedup"] > 0 for r in search["rows"])
    assert search["steps"] == 2
    served = st_leap.load(search["model"])
    assert num_layers(query_side(served)) == 3
    assert "search with an index you keep" in capsys.readouterr().out


def test_cli_demo_checks_the_search_folder_before_loading_a_model(tmp_path, capsys):
    """A search folder without qrels fails at once, naming the file, before the (missing) model is touched."""
    folder = tmp_path / "beir"
    folder.mkdir()
    (folder / "corpus.jsonl").write_text(json.dumps({"_id": "d0", "text": "a text"}) + "\n")
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q0", "text": "a query"}) + "\n")
    code = main(["demo", "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "out"),
                 "--search-corpus", str(folder)])
    assert code == 2
    assert "qrels" in capsys.readouterr().err


def test_cli_parser_imports_nothing_heavy():
    """Building the parser (what `st-leap --help` does) imports neither torch nor sentence-transformers: commands
    import the library only when they run."""
    code = "import sys, st_leap.cli; st_leap.cli.build_parser(); print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_cli_validates_arguments_before_loading_a_model(tmp_path, capsys):
    """Bad numbers and unknown tasks stop at parsing (exit 2, message on stderr), before any model is loaded."""
    missing_model = str(tmp_path / "no-such-model")
    for argv, message in [
        (["evaluate", missing_model, "--tasks", "stsb,msmarco"], "msmarco"),
        (["calibrate", missing_model, "--max-quality-drop", "-1"], "points >= 0"),
        (["diagnose", missing_model, "--batch-size", "0"], "whole number >= 1"),
        (["diagnose", missing_model, "--thresholds", "1.5"], "(0, 1]"),
    ]:
        with pytest.raises(SystemExit) as error:
            main(argv)
        assert error.value.code == 2
        assert message in capsys.readouterr().err


def test_cli_export_writes_one_graph_for_a_static_depth(tiny_bert_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import numpy as np

    import st_leap

    out = tmp_path / "exported"
    code = main(["export", tiny_bert_dir, "--backend", "onnx", "--depth", "2", "--role", "query", "--out", str(out)])
    assert code == 0
    assert "depth 2" in capsys.readouterr().out
    info = json.loads((out / "st_leap_export.json").read_text())
    assert (info["kind"], info["depth"], info["roles"], info["quantize"]) == ("static", 2, ["query"], None)
    assert sorted(p.name for p in out.glob("*.onnx")) == ["model.onnx"]
    served = st_leap.load(str(out))
    want = st_leap.from_pretrained(tiny_bert_dir).encode_query(SENTENCES, truncate_layers=2)
    np.testing.assert_allclose(served.encode_query(SENTENCES), want, atol=2e-3)


def test_cli_export_help_names_the_command(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    assert "--backend" in text and "--depth" in text and "ONE graph" in text


def test_cli_corpus_commands_check_the_corpus_before_loading_a_model(tmp_path, capsys):
    """A malformed corpus stops fit-maps and fit-query-encoder with the file and line (exit 2), before any model
    loads (the model path does not even exist)."""
    bad = tmp_path / "corpus.jsonl"
    bad.write_text('{"_id": "a", "text": "A fine document."}\n{"_id": "a", "text": "again"}\n', encoding="utf-8")
    missing_model = str(tmp_path / "no-such-model")
    for argv in (
        ["fit-maps", missing_model, "--corpus", str(bad), "--out", str(tmp_path / "out")],
        ["fit-query-encoder", missing_model, "--corpus", str(bad), "--out", str(tmp_path / "out")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "corpus.jsonl, line 2: _id 'a' repeats line 1" in err
    with pytest.raises(SystemExit) as error:  # --texts and --corpus exclude each other
        main(["fit-maps", missing_model, "--corpus", str(bad), "--texts", str(bad), "--out", str(tmp_path / "o")])
    assert error.value.code == 2


def test_cli_fit_maps_on_a_corpus(tiny_bert_dir, tmp_path, capsys):
    import st_leap
    from st_leap.exit_maps import exit_maps_module
    from tests.test_query_encoder import tiny_corpus

    corpus = tiny_corpus(tmp_path / "corpus.jsonl", n=20)
    out = tmp_path / "mapped"
    assert main(["fit-maps", tiny_bert_dir, "--corpus", str(corpus), "--max-texts", "60", "--out", str(out)]) == 0
    report = json.loads((out / "exit_maps_fit.json").read_text())
    assert report["corpus"] == str(corpus) and report["num_texts"] == 60
    assert exit_maps_module(st_leap.load(str(out))) is not None


def test_cli_fit_query_encoder_levers_reach_fit_query_encoder(tmp_path, monkeypatch, capsys):
    """``--distill-weight``, ``--retrieval-weight``, ``--hard-negatives``, ``--negatives-from``, ``--negatives-skip``,
    ``--negatives-pool``, ``--soft-weight``, ``--kinds``, ``--queries``, ``--query-fraction``, ``--train-texts``,
    ``--train-seed`` and ``--layers`` reach ``fit_query_encoder`` (``--layers`` sets the depth when ``--depth`` is not given); left out,
    its defaults apply (``kinds`` is not passed at all); a bad ``--kinds``, ``--query-fraction`` or ``--layers`` is a
    usage error."""
    import st_leap.query_encoder as query_encoder
    from tests.test_query_encoder import tiny_corpus

    corpus = tiny_corpus(tmp_path / "corpus.jsonl", n=10)
    seen = {}

    class Stop(Exception):
        pass

    def fake(index_model, corpus_path, out, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(query_encoder, "fit_query_encoder", fake)
    base = ["fit-query-encoder", "minilm", "--corpus", str(corpus), "--out", str(tmp_path / "out")]
    with pytest.raises(Stop):
        main(base + ["--distill-weight", "0", "--retrieval-weight", "2.5", "--hard-negatives", "3", "--negatives-from",
                     "document", "--negatives-skip", "2", "--negatives-pool", "20", "--soft-weight", "0.5",
                     "--kinds", "sentence, title"])
    assert {k: seen[k] for k in ("distill_weight", "retrieval_weight", "hard_negatives", "negatives_from",
                                 "negatives_skip", "negatives_pool", "soft_weight", "kinds")} == {
        "distill_weight": 0.0, "retrieval_weight": 2.5, "hard_negatives": 3, "negatives_from": "document",
        "negatives_skip": 2, "negatives_pool": 20, "soft_weight": 0.5, "kinds": ["sentence", "title"]}
    seen.clear()
    with pytest.raises(Stop):
        main(base)
    assert "kinds" not in seen and (seen["distill_weight"], seen["retrieval_weight"]) == (1.0, 1.0)
    assert (seen["hard_negatives"], seen["soft_weight"], seen["negatives_skip"], seen["negatives_pool"]) == (
        0, 0.0, None, None)
    assert (seen["queries"], seen["query_fraction"], seen["train_texts"]) == (None, None, None)
    seen.clear()
    with pytest.raises(Stop):
        main(base + ["--train-texts", "32000", "--max-steps", "1500"])
    assert (seen["train_texts"], seen["max_steps"]) == (32000, 1500)
    assert seen["layers"] is None and seen["depth"] == 3 and seen["train_seed"] == 42
    seen.clear()
    with pytest.raises(Stop):
        main(base + ["--train-seed", "7"])
    assert seen["train_seed"] == 7
    seen.clear()
    with pytest.raises(Stop):
        main(base + ["--layers", "0,3,5"])
    assert (seen["layers"], seen["depth"]) == ([0, 3, 5], 3)
    seen.clear()
    with pytest.raises(Stop):
        main(base + ["--layers", "1, 5"])
    assert (seen["layers"], seen["depth"]) == ([1, 5], 2)  # as many layers as named
    for bad in ("3,1", "0,0", "a,b", "-1,2"):
        with pytest.raises(SystemExit) as error:
            main(base + [f"--layers={bad}"])
        assert error.value.code == 2 and "--layers takes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as error:
        main(base + ["--kinds", "title,question"])
    assert error.value.code == 2 and "unknown: question" in capsys.readouterr().err
    seen.clear()
    with pytest.raises(Stop):
        main(base + ["--queries", "log.txt", "--query-fraction", "0.4"])
    assert (seen["queries"], seen["query_fraction"]) == ("log.txt", 0.4)
    for bad in ("0", "1", "x"):
        with pytest.raises(SystemExit) as error:
            main(base + ["--queries", "log.txt", "--query-fraction", bad])
        assert error.value.code == 2 and "between 0 and 1" in capsys.readouterr().err
