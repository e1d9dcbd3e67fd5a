"""evaluate, calibrate, diagnose and monitor on a query encoder for a kept index: one model whose only module is a
``Router`` (``encode_query`` -> a shallow st_leap encoder with its exit map, ``encode_document`` and plain
``encode`` -> the index model, unchanged)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer

import st_leap
import st_leap.model
from st_leap.backends import query_side
from st_leap.cli import main
from st_leap.evaluation.beir import document_text, load_beir_folder
from st_leap.evaluation.calibration import ndcg_at_k
from st_leap.exit_maps import fit_exit_maps
from st_leap.model import route_modules
from st_leap.query_encoder import build_router, init_student
from st_leap.reporting import save_model
from tests.evaluation.conftest import _build_tiny_st, random_sentences


@pytest.fixture(scope="module")
def router_dir(eval_model_dir, tmp_path_factory) -> str:
    """A saved query encoder for a kept index: the tiny 4-layer eval model as the index model; as the query route,
    the first 2 layers of another tiny model with an exit map into the index model's space (close enough to
    retrieve, far enough that scoring documents with the wrong route changes the scores)."""
    index = SentenceTransformer(eval_model_dir, device="cpu")
    other = _build_tiny_st(tmp_path_factory.mktemp("other"), hidden=32, layers=4, seed=1)
    student = init_student(other, 2, "first")
    fit_exit_maps(student, random_sentences(200, seed=9), index, show_progress_bar=False)
    folder = tmp_path_factory.mktemp("router") / "qe"
    save_model(build_router(student, index), folder)
    return str(folder)


@pytest.fixture()
def tiny_env(monkeypatch, tiny_data_dir):
    monkeypatch.setenv("ST_LEAP_DATA", str(tiny_data_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tiny_data_dir


@pytest.fixture()
def texts_file(tmp_path):
    path = tmp_path / "queries.txt"
    path.write_text("\n".join(random_sentences(30, seed=11)) + "\n", encoding="utf-8")
    return path


def routed_ndcg(model: SentenceTransformer, beir_dir) -> float:
    """NDCG@10 x100 with queries through the query route and documents through the index route."""
    corpus, queries, qrels = load_beir_folder(beir_dir)
    query_ids, doc_ids = list(queries), list(corpus)
    q = model.encode_query([queries[i] for i in query_ids])
    d = model.encode_document([document_text(corpus[i]) for i in doc_ids])
    return ndcg_at_k(q, d, query_ids, doc_ids, qrels)


def test_evaluate_runs_queries_on_the_query_route_and_documents_on_the_index_model(
    tiny_env, router_dir, eval_model_dir, tmp_path, monkeypatch, capsys
):
    """`st-leap evaluate` on a Router model runs once, as saved, writes mteb's result files, and mteb's queries
    reach the query route only while its documents and STS-B pairs reach the index model."""
    seen = {"query": 0, "document": 0}
    load_model = st_leap.model.load_model

    def spying_load_model(*args, **kwargs):
        model = load_model(*args, **kwargs)
        for role in seen:
            module = route_modules(model, role)[0]
            forward = module.forward

            def counted(features, *f_args, _role=role, _forward=forward, **f_kwargs):
                seen[_role] += int(features["input_ids"].shape[0])
                return _forward(features, *f_args, **f_kwargs)

            module.forward = counted
        return model

    monkeypatch.setattr(st_leap.model, "load_model", spying_load_model)
    out = tmp_path / "ev"
    code = main(["evaluate", router_dir, "--tasks", "stsb,scifact", "--source", "local", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "query encoder for a kept index, evaluated as saved" in printed and "STS-B scores the index model" in printed

    _, queries, _ = load_beir_folder(tiny_env / "beir" / "scifact")
    assert seen["query"] == len(queries)  # the queries, and nothing else, went through the query route
    assert seen["document"] >= 12 + 40  # the 12 documents and the STS-B sentences went through the index model

    result = json.loads((out / "evaluate.json").read_text())
    assert [run["setting"] for run in result["runs"]] == ["as saved"]
    assert result["num_layers"] == {"query": 2, "document": 4}
    assert set(result["routes"]) == {"query", "document"}
    tasks = result["runs"][0]["tasks"]
    by_role = tasks["SciFact"]["exit_stats_by_role"]
    assert by_role["query"]["expected_layers"] == 2 and by_role["document"]["expected_layers"] == 4
    assert tasks["STSBenchmark"]["exit_stats_by_role"]["default"]["expected_layers"] == 4

    model = st_leap.load(router_dir, device="cpu")
    assert tasks["SciFact"]["score"] == pytest.approx(routed_ndcg(model, tiny_env / "beir" / "scifact"), abs=1e-3)
    index = SentenceTransformer(eval_model_dir, device="cpu")
    with (tiny_env / "stsb" / "test.tsv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    a = index.encode([r["sentence1"] for r in rows], normalize_embeddings=True)
    b = index.encode([r["sentence2"] for r in rows], normalize_embeddings=True)
    expected = 100 * spearmanr((a * b).sum(axis=1), [float(r["score"]) for r in rows]).statistic
    assert tasks["STSBenchmark"]["score"] == pytest.approx(expected, abs=1e-3)  # mteb's plain encode: the index

    results = out / "mteb" / "results"
    assert len(list(results.rglob("SciFact.json"))) == 1 and len(list(results.rglob("STSBenchmark.json"))) == 1
    meta = json.loads(next(results.rglob("model_meta.json")).read_text())
    assert meta["experiment_kwargs"]["exit_threshold_query"] == "full"
    assert meta["experiment_kwargs"]["exit_threshold_document"] == "full"
    assert "A query encoder for a kept index, evaluated as saved" in (out / "evaluate.md").read_text()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--thresholds", "0.9"], "--thresholds does not apply to a query encoder for a kept index"),
        (["--exit-min-layer", "1"], "--exit-min-layer does not apply"),
        (["--backend", "beir"], "evaluated through mteb"),
        (["--no-full-depth"], "leaves nothing to run"),
    ],
)
def test_evaluate_refuses_a_sweep_of_a_router_model(tiny_env, router_dir, tmp_path, capsys, flags, message):
    code = main(["evaluate", router_dir, "--tasks", "scifact", "--source", "local", "--out", str(tmp_path), *flags])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "evaluate.json").exists()


def test_evaluate_accepts_thresholds_none_for_a_router_model(tiny_env, router_dir, tmp_path):
    code = main(
        ["evaluate", router_dir, "--tasks", "scifact", "--source", "local", "--thresholds", "none",
         "--out", str(tmp_path)]
    )
    assert code == 0
    assert len(json.loads((tmp_path / "evaluate.json").read_text())["runs"]) == 1


def test_calibrate_router_model_calibrates_its_query_route_against_the_index_documents(
    tiny_env, router_dir, texts_file, tmp_path, capsys
):
    """calibrate picks an operating point of the query route only (role 'query'), scoring its queries against the
    index model's documents, with the exit maps kept; --save-model saves the whole model, which monitor then
    watches on its query route with the saved reference."""
    out, saved = tmp_path / "cal", tmp_path / "saved"
    beir = tiny_env / "beir" / "scifact"
    code = main(
        ["calibrate", router_dir, "--beir", str(beir), "--max-quality-drop", "100", "--thresholds", "0.9",
         "--time-sample", "8", "--repeats", "1", "--out", str(out), "--save-model", str(saved)]
    )
    assert code == 0
    assert "calibrated its query route" in capsys.readouterr().out
    result = json.loads((out / "calibrate.json").read_text())
    assert list(result["roles"]) == ["query"] and result["num_layers"] == 2
    entry = result["roles"]["query"]
    model = st_leap.load(router_dir, device="cpu")
    assert entry["full"]["quality"] == pytest.approx(routed_ndcg(model, beir), abs=1e-6)  # the index's documents
    assert {row["exit_maps"] for row in entry["rows"]} == {True}  # never without the map into the index's space
    assert entry["within_budget"][0] == "static L1 (maps)"

    picked = entry["picked"]
    reloaded = st_leap.load(str(saved), device="cpu")
    assert st_leap.model.router_of(reloaded) is not None
    settings = query_side(reloaded)[0].exit_settings_for("query")
    assert settings["truncate_layers"] == picked["truncate_layers"] and settings["exit_threshold"] == picked["theta"]
    documents = random_sentences(5, seed=12)
    np.testing.assert_allclose(reloaded.encode_document(documents), model.encode_document(documents), atol=1e-6)
    assert sorted(p.name for p in (saved / "st_leap_monitor").iterdir()) == ["query.json", "query.npy"]

    code = main(["monitor", str(saved), "--stream", str(texts_file), "--window", "10", "--out", str(tmp_path / "mon")])
    assert code == 0
    monitored = json.loads((tmp_path / "mon" / "monitor.json").read_text())
    assert monitored["role"] == "query" and monitored["reference"]["num_layers"] == 2
    expected = picked["truncate_layers"] or 2
    assert [w["expected_layers"] for w in monitored["windows"]] == [expected] * 3


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "scored pairs (STS-B by default) do not measure its query route"),
        (["--pairs", "PAIRS"], "scored pairs"),
        (["--texts", "TEXTS", "--role", "document"], "its 'document' texts run the index model"),
    ],
)
def test_calibrate_router_model_says_what_to_pass(tiny_env, router_dir, texts_file, tmp_path, capsys, flags, message):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("sentence1\tsentence2\tscore\na dog\ta cat\t0.5\nthe man\ta woman\t0.2\nred car\tblue car\t0.9\n")
    flags = [{"PAIRS": str(pairs), "TEXTS": str(texts_file)}.get(flag, flag) for flag in flags]
    code = main(["calibrate", router_dir, "--max-quality-drop", "1", "--out", str(tmp_path / "cal"), *flags])
    assert code == 2
    assert message in capsys.readouterr().err


def test_calibrate_router_model_on_query_texts(router_dir, texts_file):
    """Query texts: agreement of the query route with its own full depth, in the 'query' role."""
    result = st_leap.calibrate(
        router_dir, {"texts": str(texts_file)}, 100, thresholds=[0.9], time_sample=8, repeats=1,
        reference_size=0, show_progress_bar=False,
    )
    assert list(result["roles"]) == ["query"] and result["roles"]["query"]["task"] == "query"
    assert result["roles"]["query"]["full"]["quality"] == pytest.approx(100.0)
    assert result["calibrated"].startswith("the query route")


def test_diagnose_router_model_diagnoses_its_query_route(router_dir, texts_file, tmp_path, capsys):
    out = tmp_path / "diag"
    code = main(["diagnose", router_dir, "--sentences", str(texts_file), "--no-overhead", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "diagnosing its query route" in printed and "(query route)" in printed
    result = json.loads((out / "diagnose.json").read_text())
    assert result["num_layers"] == 2  # the query route, not the 4-layer index model
    assert result["diagnosed"] == "the query route of a query encoder for a kept index"
    with pytest.raises(ValueError, match="query_side"):
        st_leap.diagnose(st_leap.load(router_dir, device="cpu"), ["a dog"], measure_overhead=False)


def test_monitor_router_model_watches_its_query_route(router_dir, texts_file, tmp_path, capsys):
    out = tmp_path / "mon"
    code = main(
        ["monitor", router_dir, "--stream", str(texts_file), "--reference-texts", str(texts_file), "--window", "10",
         "--sample-rate", "1", "--out", str(out)]
    )
    assert code == 0
    assert "monitoring its query route" in capsys.readouterr().out
    result = json.loads((out / "monitor.json").read_text())
    assert result["role"] == "query" and result["monitored"].startswith("the query route")
    assert [w["expected_layers"] for w in result["windows"]] == [2.0] * 3
    assert all(w["cosine"] == pytest.approx(1.0, abs=1e-5) for w in result["windows"])  # full depth of the route
    code = main(["monitor", router_dir, "--stream", str(texts_file), "--role", "document", "--out", str(out)])
    assert code == 2
    assert "runs the index model, unchanged" in capsys.readouterr().err
    with pytest.raises(ValueError, match="query_side"):
        st_leap.ExitMonitor(st_leap.load(router_dir, device="cpu"))


def test_library_calls_on_a_router_model(router_dir, tiny_data_dir):
    """load_model refuses a Router model unless asked; run_mteb evaluates it as saved and refuses exit settings."""
    from st_leap.evaluation.mteb import run_mteb

    model = st_leap.load(router_dir, device="cpu")
    with pytest.raises(ValueError, match="query encoder for a kept index"):
        st_leap.model.load_model(model)
    assert st_leap.model.load_model(model, allow_router=True) is model
    with pytest.raises(ValueError, match="evaluated as saved"):
        run_mteb(model, ["scifact"], exit_threshold=0.9, source="local", data_dir=tiny_data_dir)
    assert st_leap.model.num_layers(model, "query") == 2 and st_leap.model.num_layers(model) == 4
    assert st_leap.model.model_name(model, router_dir) == "qe"


@pytest.mark.parametrize("role", [None, "query"])
def test_evaluate_runs_on_an_exported_query_encoder(tiny_env, router_dir, tmp_path, capsys, role):
    """The export of a query encoder evaluates like the model it came from (both routes: the same SciFact score
    within fp32 graph noise, layers per role read from the export); a query-only export is refused with the reason,
    since mteb's documents need the index model."""
    pytest.importorskip("onnxruntime")
    from st_leap.backends import export

    exported = export(st_leap.load(router_dir, device="cpu"), tmp_path / "exported", "onnx", role=role)
    out = tmp_path / "ev"
    code = main(["evaluate", str(exported), "--tasks", "scifact", "--source", "local", "--out", str(out)])
    if role == "query":
        assert code == 2 and "query side of a query encoder for a kept index only" in capsys.readouterr().err
        assert not (out / "evaluate.json").exists()
        return
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "evaluate.json").read_text())
    assert result["num_layers"] == {"query": 2, "document": 4}
    tasks = result["runs"][0]["tasks"]
    assert tasks["SciFact"]["exit_stats_by_role"]["query"]["expected_layers"] == 2
    want = routed_ndcg(st_leap.load(router_dir, device="cpu"), tiny_env / "beir" / "scifact")
    assert tasks["SciFact"]["score"] == pytest.approx(want, abs=0.5)


def test_commands_that_need_the_layers_refuse_an_export_and_say_what_to_pass(router_dir, tmp_path, texts_file, capsys):
    """diagnose, calibrate and monitor read the encoder's layers: on an exported graph (one, or one per route) they
    stop with a message naming the export and asking for its source model, before any work."""
    pytest.importorskip("onnxruntime")
    from st_leap.backends import export

    model = st_leap.load(router_dir, device="cpu")
    for role in (None, "query"):
        exported = str(export(model, tmp_path / f"x-{role}", "onnx", role=role))
        for command in (
            ["diagnose", exported, "--sentences", str(texts_file), "--out", str(tmp_path / "d"), "--no-overhead"],
            ["calibrate", exported, "--texts", str(texts_file), "--max-quality-drop", "1"],
            ["monitor", exported, "--stream", str(texts_file)],
        ):
            assert main(command) == 2, command
            err = capsys.readouterr().err
            assert "exported onnx graph" in err and ("pass the model it was exported from" in err or "without a role" in err), err
